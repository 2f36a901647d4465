"""Writes of the Paystack provider: an invoice's payment link, and Paystack's webhook events.

The same rules as the Stripe side (services.py, webhooks.py): a sync row per invoice with a lease and a
backoff, an id of ours on every request (the transaction ``reference``, with the installation id), events
stored once by a unique key and processed once under a row lock, handlers written against the final state.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from billing.common.queue import queue_after_commit
from billing.customers.models import Customer
from billing.invoicing.models import Invoice
from billing.invoicing.services import credit_note_issue, invoice_mark_paid
from billing.payments.gateway import (
    METADATA_CUSTOMER,
    METADATA_INSTALLATION,
    METADATA_INVOICE,
    GatewayError,
    idempotency_key,
    installation_id,
)
from billing.payments.models import BillingMode, PaystackCustomer, PaystackEvent, PaystackPayment, StripeEvent, SyncState
from billing.payments.paystack import DUPLICATE_REFERENCE, PaystackGateway, paystack_enabled, paystack_gateway_get
from billing.payments.services import _due, _lease_take, _row_done, _row_error, _row_save, plan_billing_mode
from billing.payments.webhooks import NotOurs

log = logging.getLogger(__name__)
MAX_REFERENCE_TRIES = 5
Status = StripeEvent.Status  # the same statuses for both providers' events


# --- payment links ---------------------------------------------------------------------------------------
def paystack_payment_schedule(*, invoice: Invoice) -> PaystackPayment | None:
    """A finalized invoice of a Paystack plan: record its payment link, made after commit."""
    if invoice.kind != Invoice.Kind.INVOICE or invoice.status == Invoice.Status.DRAFT:
        return None
    if plan_billing_mode(plan=invoice.plan) != BillingMode.PAYSTACK_INVOICES:
        return None
    row, _ = PaystackPayment.objects.get_or_create(invoice=invoice)
    if row.state != SyncState.SYNCED and paystack_enabled():
        queue_after_commit("payments.paystack_link", invoice.pk)
    return row


def _reference(invoice_pk: int, attempt: int) -> str:
    """``tg-<inst>-invoice-<pk>``; ``-<n>`` after Paystack refused an earlier one as a duplicate (our
    answer to it was lost: the transaction exists, but its link was never stored)."""
    base = idempotency_key("invoice", invoice_pk)
    return base if attempt <= 1 else f"{base}-{attempt}"


def paystack_payment_link(*, invoice_pk: int, now: datetime | None = None) -> PaystackPayment | None:
    """Initialize the invoice's Paystack transaction and store its checkout link (once)."""
    now = now or timezone.now()
    row = PaystackPayment.objects.filter(invoice_id=invoice_pk).first()
    if row is None or row.state == SyncState.SYNCED or not _lease_take(row, now=now):
        return row
    try:
        invoice = Invoice.objects.select_related("customer").get(pk=invoice_pk)
        if invoice.status != Invoice.Status.FINALIZED:
            return _row_done(row, now=now)  # settled in Tollgate before a link was made: nothing to collect
        if not invoice.customer.email:
            raise GatewayError(f"Customer {invoice.customer.external_id} has no invoice email: Paystack needs one.",
                               retryable=False, code="no_email")
        gateway = paystack_gateway_get()
        payer = paystack_customer_ensure(customer=invoice.customer, gateway=gateway)
        metadata = {METADATA_INVOICE: str(invoice.pk), "tollgate_number": invoice.number or "",
                    METADATA_INSTALLATION: installation_id(), "paystack_customer": payer.customer_code}
        for attempt in range(1, MAX_REFERENCE_TRIES + 1):
            try:
                link = gateway.transaction_initialize(
                    email=invoice.customer.email, amount_minor=invoice.total_minor, currency=invoice.currency,
                    reference=_reference(invoice.pk, attempt), metadata=metadata,
                    callback_url=settings.PAYSTACK_CALLBACK_URL)
                break
            except GatewayError as exc:
                if exc.code != DUPLICATE_REFERENCE or attempt == MAX_REFERENCE_TRIES:
                    raise
    except GatewayError as exc:
        return _row_error(row, exc, now=now)
    return _row_done(row, now=now, reference=link.reference, authorization_url=link.authorization_url,
                     access_code=link.access_code)


def paystack_customer_ensure(*, customer: Customer, gateway: PaystackGateway) -> PaystackCustomer:
    """The customer's Paystack customer for its current invoice email, made (or found by email) once."""
    row = PaystackCustomer.objects.filter(customer=customer).first()
    if row is not None and row.email.lower() == customer.email.lower():
        return row
    code = gateway.customer_create(email=customer.email, name=customer.name, metadata={
        METADATA_CUSTOMER: customer.external_id, METADATA_INSTALLATION: installation_id()})
    forget_card = {"authorization_code": "", "card": "", "card_at": None}  # the old email's card is not this one's
    row, _ = PaystackCustomer.objects.update_or_create(
        customer=customer, defaults={"email": customer.email, "customer_code": code, **forget_card})
    return row


def _card_remember(*, customer_pk: int, data: dict[str, Any], paid_at: datetime) -> None:
    """A reusable card that paid becomes the customer's card on file, unless a newer payment brought one."""
    found, payer = data.get("authorization"), data.get("customer")
    card: dict[str, Any] = found if isinstance(found, dict) else {}
    paystack_customer: dict[str, Any] = payer if isinstance(payer, dict) else {}
    code = str(paystack_customer.get("customer_code") or "")
    if card.get("reusable") is not True or not card.get("authorization_code") or not code:
        return
    row = PaystackCustomer.objects.select_for_update().filter(customer_id=customer_pk).first()
    if row is None:  # a link made before customers were recorded
        row = PaystackCustomer.objects.create(customer_id=customer_pk, customer_code=code,
                                              email=str(paystack_customer.get("email") or ""))
    if row.customer_code != code or (row.card_at is not None and row.card_at >= paid_at):
        return  # paid as another Paystack customer (another email), or an older payment delivered late
    label = (f"{card.get('brand') or card.get('card_type') or 'card'} ending {card.get('last4') or '?'}, "
             f"expires {card.get('exp_month') or '?'}/{card.get('exp_year') or '?'}")
    row.authorization_code, row.card, row.card_at = str(card["authorization_code"]), label[:120], paid_at
    row.save(update_fields=["authorization_code", "card", "card_at", "updated_at"])


# --- webhook events ------------------------------------------------------------------------------------
def paystack_event_key(event: dict[str, Any], payload: bytes) -> str:
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    object_id = (data.get("id") or data.get("refund_reference")) if isinstance(data, dict) else None
    if object_id not in (None, ""):
        return f"{event.get('event')}:{object_id}"
    return f"{event.get('event')}:sha256:{hashlib.sha256(payload).hexdigest()}"


def paystack_event_receive(*, event: dict[str, Any], payload: bytes) -> tuple[PaystackEvent, bool]:
    """Store a verified event; True when it is new (its processing is then queued after commit)."""
    key = paystack_event_key(event, payload)
    try:
        with transaction.atomic():
            row = PaystackEvent.objects.create(event_key=key, type=str(event.get("event") or ""), payload=event)
    except IntegrityError:
        return PaystackEvent.objects.get(event_key=key), False
    queue_after_commit("payments.paystack_event_process", row.pk)
    return row, True


def paystack_event_process(*, event_pk: int) -> PaystackEvent:
    """Run the event's handler once, under a row lock; an error is recorded on the row and rolled back."""
    with transaction.atomic():
        row = PaystackEvent.objects.select_for_update().get(pk=event_pk)
        if row.status in (Status.PROCESSED, Status.IGNORED):
            return row
        handler = HANDLERS.get(row.type)
        status, error = Status.PROCESSED, ""
        if handler is None:
            status = Status.IGNORED
        else:
            try:
                with transaction.atomic():
                    handler(row.payload.get("data") or {})
            except NotOurs as exc:
                status, error = Status.IGNORED, str(exc)
            except Exception as exc:  # recorded for the operator, retried by the beat task
                log.exception("paystack event %s failed", row.event_key)
                status, error = Status.FAILED, f"{type(exc).__name__}: {exc}"[:2000]
        row.status, row.error, row.attempts, row.processed_at = status, error, row.attempts + 1, timezone.now()
        row.save(update_fields=["status", "error", "attempts", "processed_at"])
    return row


def _payment_for(data: dict[str, Any]) -> PaystackPayment:
    """The invoice's payment row: by the stored reference, or (a link whose answer we lost, paid anyway) by
    the invoice id in the transaction's metadata, when this installation made it."""
    reference = str(data.get("reference") or "")
    row = PaystackPayment.objects.select_for_update().filter(reference=reference).first() if reference else None
    found = data.get("metadata")
    metadata: dict[str, Any] = found if isinstance(found, dict) else {}
    invoice_pk = str(metadata.get(METADATA_INVOICE) or "")
    if row is None and invoice_pk.isdigit() and metadata.get(METADATA_INSTALLATION, "") == installation_id():
        row = PaystackPayment.objects.select_for_update().filter(invoice_id=int(invoice_pk)).first()
    if row is None:
        raise NotOurs(f"Paystack transaction {reference or '?'} is not a Tollgate invoice's")
    return row


def charge_success_handle(data: dict[str, Any]) -> None:
    """A payment link was paid: the invoice is paid, once the amount and currency are the invoice's."""
    row = _payment_for(data)
    invoice = Invoice.objects.get(pk=row.invoice_id)
    if data.get("status") != "success":
        raise ValueError(f"charge.success with status {data.get('status')!r}")
    if int(data.get("amount") or -1) != invoice.total_minor or str(data.get("currency") or "").upper() != invoice.currency:
        raise ValueError(f"Paystack charged {data.get('amount')} {data.get('currency')}, invoice {invoice.number} is "
                         f"{invoice.total_minor} {invoice.currency} (minor units): settle it by hand.")
    paid_at = parse_datetime(str(data.get("paid_at") or data.get("paidAt") or "")) or timezone.now()
    invoice_mark_paid(invoice=invoice, at=paid_at)
    _card_remember(customer_pk=invoice.customer_id, data=data, paid_at=paid_at)
    if row.paid_at is None:
        _row_save(row, {"paid_at": paid_at})


def refund_processed_handle(data: dict[str, Any]) -> None:
    """Paystack refunded (part of) a paid invoice: a credit note records it. The event is stored once by its
    refund reference, so a refund makes one credit note; more than what is left to credit fails visibly."""
    row = _payment_for({**data, "reference": data.get("transaction_reference") or data.get("reference")})
    invoice = Invoice.objects.select_for_update().get(pk=row.invoice_id)
    amount = int(data.get("amount") or 0)
    credited = -sum(invoice.credit_notes.values_list("total_minor", flat=True))
    if amount <= 0 or str(data.get("currency") or "").upper() != invoice.currency or credited + amount > invoice.total_minor:
        raise ValueError(f"Paystack refunded {data.get('amount')} {data.get('currency')} of invoice {invoice.number} "
                         f"({invoice.total_minor} {invoice.currency}, {credited} credited already): settle it by hand.")
    reference = str(data.get("refund_reference") or data.get("id") or "")
    credit_note_issue(invoice=invoice, amount_minor=amount, reason=f"Refunded through Paystack ({reference})",
                      at=timezone.now())


HANDLERS: dict[str, Callable[[dict[str, Any]], None]] = {"charge.success": charge_success_handle,
                                                         "refund.processed": refund_processed_handle}


# --- the beat task's sweep -----------------------------------------------------------------------------------
def paystack_sync_pending(*, now: datetime | None = None, limit: int = 200) -> dict[str, int]:
    """Links that are due (a lost task, a retry after an outage) and events that failed or were never run."""
    now = now or timezone.now()
    done = {"paystack_links": 0, "paystack_events": 0}
    if paystack_enabled():
        for pk in _due(PaystackPayment, now, limit):
            invoice_pk = PaystackPayment.objects.filter(pk=pk).values_list("invoice_id", flat=True).first()
            row = paystack_payment_link(invoice_pk=invoice_pk, now=now) if invoice_pk else None
            done["paystack_links"] += bool(row and row.state == SyncState.SYNCED)
    stale = now - timedelta(minutes=5)
    events = PaystackEvent.objects.filter(Q(status=Status.FAILED, attempts__lt=5) |
                                          Q(status=Status.RECEIVED, received_at__lt=stale))
    for pk in list(events.order_by("pk").values_list("pk", flat=True)[:limit]):
        done["paystack_events"] += paystack_event_process(event_pk=pk).status == Status.PROCESSED
    return done
