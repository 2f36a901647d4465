"""Writes of the outbound webhooks: endpoints, emitting events, and the delivery of each.

Delivery is at least once: a receiver may see an event again (a worker that died after the POST and
before recording it, a resend), always with the same ``id``, and dedups by it. Each attempt holds a lease
on its row (one worker sends at a time); a failed attempt backs off exponentially with jitter until
``retry_until`` (``TOLLGATE_WEBHOOK_RETRY_HOURS`` after the event, 72 h by default), and the beat's
``webhooks-sweep`` queues whatever is due, so a lost task or a dead worker delays a delivery, never drops it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from billing.audit.services import audit_changed, audit_created, snapshot
from billing.common.errors import validation_error
from billing.common.queue import task_named
from billing.notify import signing
from billing.notify.event_types import EVENT_TYPES
from billing.notify.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

log = logging.getLogger(__name__)

BACKOFF_FIRST = timedelta(seconds=30)  # then doubled each attempt: 30 s, 1 min, 2 min ... up to BACKOFF_CAP
BACKOFF_CAP = timedelta(hours=6)
REQUEUE_AFTER = timedelta(minutes=2)  # a queued delivery not attempted by then is queued again by the sweep
SWEEP_BATCH = 1000
RESPONSE_KEPT = 500  # characters of a failed answer's body kept in last_error
MAX_ENDPOINTS = 50
Data = dict[str, Any]


def _timeout() -> float:
    return float(settings.TOLLGATE_WEBHOOK_TIMEOUT_SECONDS)


def _window() -> timedelta:
    return timedelta(hours=float(settings.TOLLGATE_WEBHOOK_RETRY_HOURS))


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: exponential, capped, with ±20% jitter so that
    endpoints that failed together do not retry together."""
    base = min(BACKOFF_FIRST * 2 ** min(max(attempts - 1, 0), 20), BACKOFF_CAP)
    return base * (0.8 + secrets.randbelow(401) / 1000)


# --- endpoints ----------------------------------------------------------------------------------------

def endpoint_validate(*, url: str, events: list[str]) -> None:
    errors: dict[str, list[str]] = {}
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # "http://[::1", a port that is not a number or out of range
        usable = False
    if not usable:
        errors["url"] = ["An absolute http:// or https:// URL."]
    unknown = [e for e in events if e not in EVENT_TYPES]
    if not events:
        errors["events"] = ["At least one event type."]
    elif unknown:
        errors["events"] = [f"Unknown event type {e!r}; one of {', '.join(EVENT_TYPES)}." for e in unknown]
    if errors:
        raise validation_error(errors)


@transaction.atomic
def endpoint_create(*, url: str, events: list[str], description: str = "", actor: str = "") -> WebhookEndpoint:
    """A new endpoint with a new signing secret (the caller shows it once)."""
    endpoint_validate(url=url, events=events)
    if WebhookEndpoint.objects.filter(deleted_at__isnull=True).count() >= MAX_ENDPOINTS:
        raise validation_error({"url": [f"At most {MAX_ENDPOINTS} endpoints."]})
    endpoint = WebhookEndpoint.objects.create(
        public_id="we_" + secrets.token_hex(12), url=url, events=list(dict.fromkeys(events)),
        description=description, secret=signing.secret_new())
    audit_created(endpoint, actor=actor)  # the secret is never copied into the log
    return endpoint


@transaction.atomic
def endpoint_delete(*, endpoint: WebhookEndpoint, now: datetime, actor: str = "") -> None:
    """The endpoint gets nothing more: its pending deliveries are cancelled, its history stays."""
    before = snapshot(WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk))
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(active=False, deleted_at=now)
    audit_changed(WebhookEndpoint.objects.get(pk=endpoint.pk), before, action="webhook_endpoint.deleted", actor=actor)
    endpoint.deliveries.filter(state=WebhookDelivery.State.PENDING).update(
        state=WebhookDelivery.State.CANCELLED, next_attempt_at=None)


@transaction.atomic
def endpoint_active_set(*, endpoint: WebhookEndpoint, active: bool, actor: str = "") -> WebhookEndpoint:
    """Disable (nothing new is sent; pending deliveries are cancelled when their turn comes) or enable it
    again: unlike deleting, the endpoint, its secret and its subscriptions stay."""
    locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    if locked.active == active:
        return locked
    before = snapshot(locked)
    locked.active = active
    locked.save(update_fields=["active"])
    audit_changed(locked, before, action="webhook_endpoint." + ("enabled" if active else "disabled"), actor=actor)
    return locked


# --- emitting -----------------------------------------------------------------------------------------

def event_emit(*, type: str, key: str, data: Data, created: datetime | None = None) -> WebhookEvent | None:
    """Record an event once per ``key`` and a delivery for each endpoint subscribed to ``type`` now,
    then queue them after commit. Emitting the same key again adds nothing. None when no endpoint
    subscribes (nothing is stored)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {type!r}")
    endpoints = [e for e in WebhookEndpoint.objects.filter(active=True, deleted_at__isnull=True) if type in e.events]
    if not endpoints:
        return None
    now = timezone.now()
    with transaction.atomic():
        event, _ = WebhookEvent.objects.get_or_create(key=key, defaults={
            "public_id": "evt_" + secrets.token_hex(12), "type": type, "created": created or now,
            "data": json.loads(json.dumps(data, cls=DjangoJSONEncoder))})
        WebhookDelivery.objects.bulk_create(
            [WebhookDelivery(event=event, endpoint=e, retry_until=event.created + _window(), queued_at=now)
             for e in endpoints], ignore_conflicts=True)
        pks = list(event.deliveries.filter(state=WebhookDelivery.State.PENDING, queued_at=now).values_list("pk", flat=True))
        transaction.on_commit(lambda: _enqueue(pks))
    return event


def _enqueue(pks: Iterable[int]) -> None:
    """Queue one delivery task per row; a broker failure is logged: the sweep queues the row again."""
    task = task_named("notify.deliver")
    for pk in pks:
        try:
            task.delay(pk)
        except Exception:
            log.warning("could not queue webhook delivery %s; the sweep will", pk, exc_info=True)


# --- delivering ---------------------------------------------------------------------------------------

def payload(event: WebhookEvent) -> bytes:
    """The body POSTed, the same bytes on every attempt."""
    created = event.created.astimezone(dt_timezone.utc).replace(microsecond=0)
    body = {"id": event.public_id, "type": event.type, "created": created.isoformat().replace("+00:00", "Z"),
            "data": event.data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


_client: tuple[int, httpx.Client] | None = None


def _http() -> httpx.Client:
    """One client per process (building one loads the CA bundle, ~80 ms); a forked worker makes its own."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), httpx.Client(follow_redirects=False,
                                             limits=httpx.Limits(max_keepalive_connections=20)))
    return _client[1]


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str]:
    """(status, error). Redirects are never followed (a 3xx is a failure naming its Location); only the
    first bytes of an answer are read."""
    try:
        with _http().stream("POST", url, content=body, headers=headers, timeout=_timeout(),
                            follow_redirects=False) as response:
            if 200 <= response.status_code < 300:
                return response.status_code, ""
            if response.is_redirect:
                return response.status_code, f"redirect to {response.headers.get('location', '?')} not followed"
            head = b""
            for chunk in response.iter_bytes():
                head += chunk
                if len(head) >= RESPONSE_KEPT:
                    break
            return response.status_code, f"HTTP {response.status_code}: {head[:RESPONSE_KEPT].decode(errors='replace')}"
    except httpx.TimeoutException as exc:
        return None, f"timeout after {_timeout():g} s: {exc!r}"[:2000]
    except httpx.HTTPError as exc:
        return None, f"{exc!r}"[:2000]


def delivery_attempt(*, delivery_pk: int, now: datetime | None = None) -> WebhookDelivery | None:
    """Send one delivery if it is pending, due and not leased by another worker; record the answer.
    Must run outside a transaction: the lease is committed before the POST."""
    now = now or timezone.now()
    lease = now + timedelta(seconds=_timeout() + 30)
    claimed = (WebhookDelivery.objects.filter(pk=delivery_pk, state=WebhookDelivery.State.PENDING)
               .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
               .filter(Q(leased_until__isnull=True) | Q(leased_until__lt=now))
               .update(leased_until=lease))
    delivery = WebhookDelivery.objects.select_related("event", "endpoint").filter(pk=delivery_pk).first()
    if not claimed or delivery is None:
        return delivery
    endpoint = delivery.endpoint
    mine = WebhookDelivery.objects.filter(pk=delivery_pk, leased_until=lease)
    if not endpoint.active or endpoint.deleted_at is not None:
        mine.update(state=WebhookDelivery.State.CANCELLED, leased_until=None, queued_at=None, next_attempt_at=None)
        delivery.refresh_from_db()
        return delivery
    body = payload(delivery.event)
    headers = {"Content-Type": "application/json", "User-Agent": "Tollgate-Webhooks/1",
               signing.HEADER: signing.header_value(secret=endpoint.secret, timestamp=int(now.timestamp()), body=body),
               "Tollgate-Event-Id": delivery.event.public_id}
    status, error = _post(endpoint.url, body, headers)
    attempts = delivery.attempts + 1
    done: dict[str, Any] = {"attempts": F("attempts") + 1, "last_status": status, "last_error": error,
                            "last_attempt_at": now, "leased_until": None, "queued_at": None}
    if status is not None and 200 <= status < 300:
        done.update(state=WebhookDelivery.State.DELIVERED, delivered_at=now, next_attempt_at=None)
    else:
        later = now + backoff(attempts)
        if later > delivery.retry_until:
            done.update(state=WebhookDelivery.State.FAILED, next_attempt_at=None)
            log.warning("webhook %s to %s failed for good after %s attempts: %s", delivery.event.public_id,
                        endpoint.url, attempts, error)
        else:
            done.update(next_attempt_at=later)
    if not mine.update(**done):
        log.warning("webhook delivery %s outlived its lease; its outcome (%s) was recorded by another", delivery_pk, status)
    delivery.refresh_from_db()
    return delivery


def deliveries_sweep(*, now: datetime | None = None) -> int:
    """The beat's safety net: queue every pending delivery that is due, not leased, and not queued in
    the last ``REQUEUE_AFTER``. Returns how many were queued."""
    now = now or timezone.now()
    due = (WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING)
           .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
           .filter(Q(leased_until__isnull=True) | Q(leased_until__lt=now))
           .filter(Q(queued_at__isnull=True) | Q(queued_at__lt=now - REQUEUE_AFTER))
           .order_by(F("next_attempt_at").asc(nulls_first=True), "pk"))
    pks = list(due.values_list("pk", flat=True)[:SWEEP_BATCH])
    if pks:
        WebhookDelivery.objects.filter(pk__in=pks).update(queued_at=now)
        _enqueue(pks)
    return len(pks)


def delivery_resend(*, delivery: WebhookDelivery, now: datetime | None = None) -> WebhookDelivery:
    """Send the delivery's event again (same id), whatever its state: pending now, with a fresh retry
    window, queued after commit."""
    now = now or timezone.now()
    with transaction.atomic():
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            state=WebhookDelivery.State.PENDING, next_attempt_at=None, retry_until=now + _window(), queued_at=now)
        pk = delivery.pk
        transaction.on_commit(lambda: _enqueue([pk]))
    delivery.refresh_from_db()
    return delivery
