"""Stripe webhook events: stored once by their id, processed once by a task through a dispatch table.

Delivery is at least once, late and in any order. So: the event row is unique by Stripe's id (a repeat
is answered 200 and changes nothing); processing locks the row and skips one already processed; and
every handler is written against the final state rather than the previous one (an invoice's Stripe
status only moves forward, the Tollgate transitions are idempotent), so ``invoice.paid`` before
``invoice.finalized`` ends paid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing.common.queue import queue_after_commit
from billing.invoicing.models import Invoice
from billing.invoicing.services import invoice_mark_paid, invoice_mark_uncollectible, invoice_void
from billing.payments.gateway import METADATA_INVOICE, GatewayError, gateway_get
from billing.payments.models import StripeCustomer, StripeEvent, StripeInvoiceSync
from billing.payments.services import _row_save, forward_status

log = logging.getLogger(__name__)


class NotOurs(Exception):
    """The event is about an object Tollgate did not create: acknowledged, nothing to do."""


def stripe_event_receive(*, event: dict[str, Any]) -> tuple[StripeEvent, bool]:
    """Store a verified event; True when it is new (then its processing is queued after commit)."""
    try:
        with transaction.atomic():
            row = StripeEvent.objects.create(event_id=event["id"], type=event["type"], created=int(event.get("created") or 0),
                                             payload=event)
    except IntegrityError:
        return StripeEvent.objects.get(event_id=event["id"]), False
    queue_after_commit("payments.event_process", row.pk)
    return row, True


def stripe_event_process(*, event_pk: int) -> StripeEvent:
    """Run the event's handler once. The row lock serializes two workers given the same event; a row
    already processed (or ignored) is left alone. A handler's error is recorded on the row (failed) and
    its changes rolled back; the beat task retries failed events."""
    with transaction.atomic():
        row = StripeEvent.objects.select_for_update().get(pk=event_pk)
        if row.status in (StripeEvent.Status.PROCESSED, StripeEvent.Status.IGNORED):
            return row
        handler = HANDLERS.get(row.type)
        error = ""
        if handler is None:
            status = StripeEvent.Status.IGNORED
        else:
            try:
                with transaction.atomic():
                    handler(row.payload["data"]["object"], row)
                status = StripeEvent.Status.PROCESSED
            except NotOurs as exc:
                status, error = StripeEvent.Status.IGNORED, str(exc)
            except Exception as exc:  # recorded on the row for the operator, retried by the beat task
                log.exception("stripe event %s (%s) failed", row.event_id, row.type)
                status, error = StripeEvent.Status.FAILED, f"{type(exc).__name__}: {exc}"[:2000]
        row.status, row.error, row.attempts, row.processed_at = status, error, row.attempts + 1, timezone.now()
        row.save(update_fields=["status", "error", "attempts", "processed_at"])
    return row


def stripe_events_retry_failed(*, max_attempts: int = 5, limit: int = 200, now: datetime | None = None) -> int:
    """Failed events (up to ``max_attempts``), and events whose processing task never ran (a lost message)."""
    stale = (now or timezone.now()) - timedelta(minutes=5)
    pks = StripeEvent.objects.filter(
        Q(status=StripeEvent.Status.FAILED, attempts__lt=max_attempts) |
        Q(status=StripeEvent.Status.RECEIVED, received_at__lt=stale)).order_by("pk")
    return sum(stripe_event_process(event_pk=pk).status == StripeEvent.Status.PROCESSED
               for pk in list(pks.values_list("pk", flat=True)[:limit]))


# --- handlers ----------------------------------------------------------------------------------------------
def _when(obj: dict[str, Any], transition: str, event: StripeEvent) -> datetime:
    stamp = (obj.get("status_transitions") or {}).get(transition) or event.created
    return datetime.fromtimestamp(int(stamp), tz=dt_timezone.utc) if stamp else timezone.now()


def _sync_for(obj: dict[str, Any]) -> StripeInvoiceSync:
    """Our sync row of a Stripe invoice: by its id, or (a webhook overtaking our own push's commit) by the
    Tollgate invoice id in its metadata."""
    found = StripeInvoiceSync.objects.select_for_update().filter(stripe_invoice_id=obj.get("id")).first()
    if found is not None:
        return found
    invoice_pk = str((obj.get("metadata") or {}).get(METADATA_INVOICE) or "")
    if invoice_pk.isdigit() and Invoice.objects.filter(pk=int(invoice_pk)).exists():
        row, _ = StripeInvoiceSync.objects.select_for_update().get_or_create(invoice_id=int(invoice_pk))
        if not row.stripe_invoice_id:
            row.stripe_invoice_id = obj.get("id")
            row.save(update_fields=["stripe_invoice_id", "updated_at"])
        return row
    raise NotOurs(f"Stripe invoice {obj.get('id')} is not a Tollgate invoice")


def _status(row: StripeInvoiceSync, status: str, event: StripeEvent) -> None:
    fields: dict[str, Any] = {"stripe_status": forward_status(row.stripe_status, status),
                              "stripe_changed_at": max(row.stripe_changed_at or 0, event.created)}
    if fields["stripe_status"] in ("paid", "void"):
        fields["last_payment_error"] = ""  # nothing left to collect: no reason to show why it was not
    _row_save(row, fields)


def invoice_finalized_handle(obj: dict[str, Any], event: StripeEvent) -> None:
    _status(_sync_for(obj), "open", event)


def invoice_paid_handle(obj: dict[str, Any], event: StripeEvent) -> None:
    row = _sync_for(obj)
    _status(row, "paid", event)
    invoice = Invoice.objects.get(pk=row.invoice_id)
    invoice_mark_paid(invoice=invoice, at=_when(obj, "paid_at", event))


def invoice_marked_uncollectible_handle(obj: dict[str, Any], event: StripeEvent) -> None:
    """Stripe's dunning gave up (or someone marked it in Stripe): the Tollgate invoice follows, unless it
    has moved on already (paid later, voided), which a late event must not undo."""
    row = _sync_for(obj)
    _status(row, "uncollectible", event)
    invoice = Invoice.objects.get(pk=row.invoice_id)
    if invoice.status == Invoice.Status.FINALIZED and row.stripe_status == "uncollectible":
        invoice_mark_uncollectible(invoice=invoice, at=_when(obj, "marked_uncollectible_at", event))


def _decline_reason(obj: dict[str, Any]) -> str:
    """The decline reason from the invoice's payment. Without Stripe configured, or for a payment Stripe
    cannot show, the attempt number; an outage raises (the event fails and the sweep retries it)."""
    try:
        reason = gateway_get().invoice_payment_error(stripe_invoice_id=str(obj.get("id")))
    except GatewayError as exc:
        if exc.retryable and exc.code != "not_configured":
            raise
        reason = ""
    return reason or f"payment attempt {obj.get('attempt_count') or '?'} failed"


def invoice_payment_failed_handle(obj: dict[str, Any], event: StripeEvent) -> None:
    """Stripe retries the payment itself. The failure count is Stripe's attempt count (the same in any
    order); the reason is the newest failure's: an event older than the invoice's last change by
    ``created`` (a failure delivered after the payment that followed it) changes nothing else."""
    row = _sync_for(obj)
    attempts = max(row.payment_failures, int(obj.get("attempt_count") or row.payment_failures + 1))
    stale = event.created < (row.stripe_changed_at or 0) or row.stripe_status in ("paid", "void")
    if stale:
        _row_save(row, {"payment_failures": attempts})
        return
    error = _decline_reason(obj)
    _status(row, "open", event)
    _row_save(row, {"payment_failures": attempts, "last_payment_error": error[:2000]})


def invoice_voided_handle(obj: dict[str, Any], event: StripeEvent) -> None:
    row = _sync_for(obj)
    _status(row, "void", event)
    invoice = Invoice.objects.get(pk=row.invoice_id)
    invoice_void(invoice=invoice, at=_when(obj, "voided_at", event), reason="voided in Stripe")


def customer_deleted_handle(obj: dict[str, Any], event: StripeEvent) -> None:
    row = StripeCustomer.objects.select_for_update().filter(stripe_customer_id=obj.get("id")).first()
    if row is None:
        raise NotOurs(f"Stripe customer {obj.get('id')} is not a Tollgate customer")
    if row.deleted_at is None:
        _row_save(row, {"deleted_at": timezone.now()})


# --- payment methods -----------------------------------------------------------------------------------------
def _customer_for(stripe_customer_id: object) -> StripeCustomer:
    row = StripeCustomer.objects.select_for_update().filter(stripe_customer_id=str(stripe_customer_id or "")).first()
    if row is None or not stripe_customer_id:
        raise NotOurs(f"Stripe customer {stripe_customer_id} is not a Tollgate customer")
    return row


def _default_payment_method_set(row: StripeCustomer, payment_method: str) -> None:
    assert row.stripe_customer_id
    gateway_get().customer_default_payment_method_set(stripe_customer_id=row.stripe_customer_id,
                                                      customer_pk=row.customer_id, payment_method=payment_method)
    _row_save(row, {"default_payment_method": payment_method})


def checkout_session_completed_handle(obj: dict[str, Any], event: StripeEvent) -> None:
    """The customer saved a card on the Checkout page (setup mode): it becomes the default for invoices."""
    if obj.get("mode") != "setup" or not obj.get("setup_intent"):
        raise NotOurs(f"Checkout session {obj.get('id')} is not a payment-method setup")
    row = _customer_for(obj.get("customer"))
    payment_method = gateway_get().setup_intent_payment_method(setup_intent_id=str(obj["setup_intent"]))
    if payment_method and payment_method != row.default_payment_method:
        _default_payment_method_set(row, payment_method)


def customer_updated_handle(obj: dict[str, Any], event: StripeEvent) -> None:
    """The default payment method as Stripe holds it (changed in Stripe's dashboard or portal too)."""
    row = _customer_for(obj.get("id"))
    found = (obj.get("invoice_settings") or {}).get("default_payment_method")
    found = found.get("id") if isinstance(found, dict) else found
    if (found or "") != row.default_payment_method:
        _row_save(row, {"default_payment_method": str(found or "")})


def payment_method_attached_handle(obj: dict[str, Any], event: StripeEvent) -> None:
    """A card attached to a customer without a default (by the operator in Stripe, say) becomes the default."""
    row = _customer_for(obj.get("customer"))
    if not row.default_payment_method and obj.get("id"):
        _default_payment_method_set(row, str(obj["id"]))


def payment_method_detached_handle(obj: dict[str, Any], event: StripeEvent) -> None:
    """The default card was removed: invoices are sent to be paid by their due date until there is another."""
    row = StripeCustomer.objects.select_for_update().filter(default_payment_method=str(obj.get("id") or "")).first()
    if row is None or not obj.get("id"):
        raise NotOurs(f"payment method {obj.get('id')} is no Tollgate customer's default")
    _row_save(row, {"default_payment_method": ""})


HANDLERS: dict[str, Callable[[dict[str, Any], StripeEvent], None]] = {
    "invoice.finalized": invoice_finalized_handle,
    "invoice.paid": invoice_paid_handle,
    "invoice.payment_failed": invoice_payment_failed_handle,
    "invoice.marked_uncollectible": invoice_marked_uncollectible_handle,
    "invoice.voided": invoice_voided_handle,
    "customer.deleted": customer_deleted_handle,
    "customer.updated": customer_updated_handle,
    "checkout.session.completed": checkout_session_completed_handle,
    "payment_method.attached": payment_method_attached_handle,
    "payment_method.detached": payment_method_detached_handle,
}
