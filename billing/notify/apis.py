"""The webhook endpoints API (admin, operator-wide): endpoints, their deliveries, resending one."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.common.auth import principal_of
from billing.common.errors import CommonCode, DomainError, validation_error
from billing.common.openapi import data_list
from billing.notify import selectors, services
from billing.notify.event_types import EVENT_TYPES
from billing.notify.models import WebhookDelivery, WebhookEndpoint
from billing.notify.openapi import DeliveryDoc, EndpointCreatedDoc, EndpointDoc


def _operator_only(request: Request) -> None:
    """Endpoints receive every customer's events: a key restricted to one customer may not manage them."""
    if principal_of(request).customer_id is not None:
        raise DomainError(CommonCode.FORBIDDEN,
                          "Webhook endpoints are the operator's: a key restricted to a customer may not manage them.")


def _endpoint_out(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {"id": endpoint.public_id, "url": endpoint.url, "events": endpoint.events,
            "description": endpoint.description, "active": endpoint.active, "created_at": endpoint.created_at}


def _delivery_out(delivery: WebhookDelivery) -> dict[str, Any]:
    event = delivery.event
    return {"id": delivery.pk, "event": {"id": event.public_id, "type": event.type, "created": event.created},
            "status": delivery.state, "attempts": delivery.attempts, "next_attempt_at": delivery.next_attempt_at,
            "retry_until": delivery.retry_until, "last_status": delivery.last_status, "last_error": delivery.last_error,
            "last_attempt_at": delivery.last_attempt_at, "delivered_at": delivery.delivered_at,
            "created_at": delivery.created_at}


class WebhookEndpointsApi(APIView):
    required_scope = "admin"

    class EndpointInput(serializers.Serializer):
        url = serializers.CharField(max_length=2000)
        events = serializers.ListField(child=serializers.CharField(max_length=64), max_length=len(EVENT_TYPES) * 2,
                                       help_text="Event types: " + ", ".join(EVENT_TYPES))
        description = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)

    @extend_schema(responses={200: data_list("WebhookEndpointList", EndpointDoc())}, operation_id="webhook_endpoints_list")
    def get(self, request: Request) -> Response:
        _operator_only(request)
        return Response({"data": [_endpoint_out(e) for e in selectors.endpoints_list()]})

    @extend_schema(request=EndpointInput, responses={201: EndpointCreatedDoc}, operation_id="webhook_endpoints_create",
                   description="The answer carries the signing `secret`, shown this once.")
    def post(self, request: Request) -> Response:
        _operator_only(request)
        data = self.EndpointInput(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint = services.endpoint_create(**data.validated_data)
        return Response({**_endpoint_out(endpoint), "secret": endpoint.secret}, status=201)


class WebhookEndpointDetailApi(APIView):
    required_scope = "admin"

    @extend_schema(responses={200: EndpointDoc}, operation_id="webhook_endpoint_get")
    def get(self, request: Request, endpoint_id: str) -> Response:
        _operator_only(request)
        return Response(_endpoint_out(selectors.endpoint_get(public_id=endpoint_id)))

    @extend_schema(responses={204: None}, operation_id="webhook_endpoint_delete")
    def delete(self, request: Request, endpoint_id: str) -> Response:
        _operator_only(request)
        endpoint = selectors.endpoint_get(public_id=endpoint_id)
        services.endpoint_delete(endpoint=endpoint, now=datetime.now(timezone.utc))
        return Response(status=204)


class WebhookDeliveriesApi(APIView):
    """The endpoint's deliveries, newest first (at most ``limit``, default 100, up to 1000)."""

    required_scope = "admin"

    @extend_schema(parameters=[OpenApiParameter("status", str, enum=list(WebhookDelivery.State.values)),
                               OpenApiParameter("limit", int)],
                   responses={200: data_list("WebhookDeliveryList", DeliveryDoc())}, operation_id="webhook_deliveries_list")
    def get(self, request: Request, endpoint_id: str) -> Response:
        _operator_only(request)
        endpoint = selectors.endpoint_get(public_id=endpoint_id)
        state = request.query_params.get("status") or None
        if state and state not in WebhookDelivery.State.values:
            raise validation_error({"status": [f"One of {', '.join(WebhookDelivery.State.values)}."]})
        try:
            limit = int(request.query_params.get("limit") or 100)
        except ValueError:
            raise validation_error({"limit": ["An integer from 1 to 1000."]}) from None
        if not 1 <= limit <= 1000:
            raise validation_error({"limit": ["An integer from 1 to 1000."]})
        rows = selectors.deliveries_list(endpoint=endpoint, state=state)[:limit]
        return Response({"data": [_delivery_out(d) for d in rows]})


class WebhookDeliveryResendApi(APIView):
    """Send the delivery's event again, with the same id (e.g. after fixing the receiver)."""

    required_scope = "admin"

    @extend_schema(request=None, responses={202: DeliveryDoc}, operation_id="webhook_delivery_resend")
    def post(self, request: Request, endpoint_id: str, delivery_id: str) -> Response:
        _operator_only(request)
        endpoint = selectors.endpoint_get(public_id=endpoint_id)
        delivery = selectors.delivery_get(endpoint=endpoint, delivery_id=delivery_id)
        return Response(_delivery_out(services.delivery_resend(delivery=delivery)), status=202)
