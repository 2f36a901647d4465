"""Reads of the outbound webhooks (endpoints are operator-wide: no customer filter applies)."""

from __future__ import annotations

from django.db.models import OuterRef, QuerySet, Subquery

from billing.common.errors import CommonCode, DomainError
from billing.notify.models import WebhookDelivery, WebhookEndpoint


def endpoints_list() -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(deleted_at__isnull=True).order_by("created_at", "pk")


def endpoints_with_last_delivery() -> QuerySet[WebhookEndpoint]:
    """The live endpoints, each annotated with its newest delivery's state and HTTP status (one query)."""
    newest = WebhookDelivery.objects.filter(endpoint=OuterRef("pk")).order_by("-created_at", "-pk")
    return endpoints_list().annotate(last_state=Subquery(newest.values("state")[:1]),
                                     last_http_status=Subquery(newest.values("last_status")[:1]),
                                     last_attempt=Subquery(newest.values("last_attempt_at")[:1]))


def endpoint_get(*, public_id: str) -> WebhookEndpoint:
    endpoint = endpoints_list().filter(public_id=public_id).first()
    if endpoint is None:
        raise DomainError(CommonCode.NOT_FOUND, "No such webhook endpoint.")
    return endpoint


def deliveries_list(*, endpoint: WebhookEndpoint, state: str | None = None) -> QuerySet[WebhookDelivery]:
    """Newest first."""
    qs = endpoint.deliveries.select_related("event").order_by("-created_at", "-pk")
    return qs.filter(state=state) if state else qs


def delivery_get(*, endpoint: WebhookEndpoint, delivery_id: str) -> WebhookDelivery:
    try:
        pk = int(delivery_id)
    except ValueError:
        raise DomainError(CommonCode.NOT_FOUND, "No such delivery.") from None
    delivery = endpoint.deliveries.select_related("event").filter(pk=pk).first()
    if delivery is None:
        raise DomainError(CommonCode.NOT_FOUND, "No such delivery.")
    return delivery
