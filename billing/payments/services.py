"""Writes of the Stripe integration: onboarding customers, pushing invoices, reporting meter usage.

Each push works on one sync row (models.py) and is safe to run any number of times, concurrently too:
- a lease (``leased_until``, taken by one conditional UPDATE) lets one worker push a row at a time;
- every Stripe id is stored as soon as Stripe answers, so a retry continues where the last one stopped;
- every write carries an idempotency key derived from our ids (gateway.py), which covers a crash between
  Stripe's answer and our commit (Stripe keeps keys 24 hours; the beat retries within minutes).
A retryable failure (outage, timeout, 5xx) leaves the row ``pending`` with ``last_error`` and a
``next_attempt_at``; a refusal makes it ``failed`` until an operator retries it (console).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from billing.audit.services import audit_record, snapshot
from billing.catalog.models import Plan
from billing.common.fields import decimal_to_text
from billing.common.queue import queue_after_commit
from billing.customers.models import Customer
from billing.invoicing.models import Invoice
from billing.payments.gateway import GatewayError, StripeGateway, gateway_get
from billing.payments.models import (
    BillingMode,
    PlanBilling,
    StripeCustomer,
    StripeInvoiceItem,
    StripeInvoiceSync,
    SyncRow,
    SyncState,
)

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)
BACKOFF_SECONDS = (30, 60, 120, 300, 600, 1800, 3600)  # then hourly

SyncRowT = TypeVar("SyncRowT", bound=SyncRow)


def stripe_enabled() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=BACKOFF_SECONDS[min(attempts, len(BACKOFF_SECONDS)) - 1] if attempts else 0)


def _lease_take(row: SyncRow, *, now: datetime) -> bool:
    model = type(row)
    free = Q(leased_until__isnull=True) | Q(leased_until__lt=now)
    return bool(model._default_manager.filter(pk=row.pk).filter(free).update(leased_until=now + LEASE))


def _row_done(row: SyncRowT, *, now: datetime, **fields: Any) -> SyncRowT:
    fields.update(state=SyncState.SYNCED, last_error="", next_attempt_at=None, leased_until=None, synced_at=now)
    return _row_save(row, fields)


def _row_error(row: SyncRowT, exc: GatewayError, *, now: datetime) -> SyncRowT:
    attempts = row.attempts + 1
    state = SyncState.PENDING if exc.retryable else SyncState.FAILED
    log.warning("payments sync %s failed (attempt %d, %s): %s", row, attempts, state, exc)
    return _row_save(row, {"state": state, "attempts": attempts, "last_error": str(exc)[:2000],
                           "next_attempt_at": now + backoff(attempts), "leased_until": None})


def _row_save(row: SyncRowT, fields: dict[str, Any]) -> SyncRowT:
    for name, value in fields.items():
        setattr(row, name, value)
    row.save(update_fields=[*fields, "updated_at"])
    return row


def _row_reset(row: SyncRowT) -> SyncRowT:
    """Due now: for a new request (an update to sync, an operator's retry)."""
    return _row_save(row, {"state": SyncState.PENDING, "next_attempt_at": None})


# --- plans ----------------------------------------------------------------------------------------------
def plan_billing_mode(*, plan: Plan | None) -> str:
    if plan is None:
        return BillingMode.TOLLGATE_INVOICES
    found = PlanBilling.objects.filter(plan=plan).values_list("mode", flat=True).first()
    return found or BillingMode.TOLLGATE_INVOICES


def plan_billing_mode_set(*, plan: Plan, mode: str) -> PlanBilling:
    if mode not in BillingMode.values:
        raise ValueError(f"mode must be one of {', '.join(BillingMode.values)}")
    with transaction.atomic():
        before = snapshot(PlanBilling.objects.select_for_update().filter(plan=plan).first())
        row, _ = PlanBilling.objects.update_or_create(plan=plan, defaults={"mode": mode})
        if before != snapshot(row):
            audit_record(action="plan_billing.set", obj=row, before=before, after=snapshot(row))
    return row


# --- customers ------------------------------------------------------------------------------------------
def stripe_customer_sync_schedule(*, customer: Customer) -> StripeCustomer:
    """Called inside customer_create's / customer_update's transaction (receivers.py): the row records that
    Stripe must hear of it; the task runs after commit (and the beat task catches anything a lost task missed)."""
    row, created = StripeCustomer.objects.get_or_create(customer=customer)
    if not created:
        _row_reset(row)
    if stripe_enabled():
        queue_after_commit("payments.customer_sync", customer.pk)
    return row


def _customer_push(row: StripeCustomer, gateway: StripeGateway) -> StripeCustomer:
    customer = Customer.objects.get(pk=row.customer_id)
    if not row.stripe_customer_id:
        row.stripe_customer_id = gateway.customer_create(customer_pk=customer.pk, external_id=customer.external_id,
                                                         name=customer.name, email=customer.email)
        row.synced_version = customer.updated_at
        row.save(update_fields=["stripe_customer_id", "synced_version", "updated_at"])
    elif row.synced_version != customer.updated_at and row.deleted_at is None:
        gateway.customer_update(stripe_customer_id=row.stripe_customer_id, customer_pk=customer.pk,
                                version=f"{customer.updated_at.timestamp():.6f}", name=customer.name, email=customer.email)
        row.synced_version = customer.updated_at
        row.save(update_fields=["synced_version", "updated_at"])
    return row


def stripe_customer_sync(*, customer_pk: int, now: datetime | None = None) -> StripeCustomer:
    now = now or timezone.now()
    row, _ = StripeCustomer.objects.get_or_create(customer_id=customer_pk)
    if row.state == SyncState.SYNCED or not _lease_take(row, now=now):
        return row
    try:
        _customer_push(row, gateway_get())
    except GatewayError as exc:
        return _row_error(row, exc, now=now)
    current = Customer.objects.filter(pk=customer_pk).values_list("updated_at", flat=True).first()
    if row.deleted_at is None and current != row.synced_version:
        # updated while we pushed (its own task found the lease taken): due again, now
        return _row_save(row, {"state": SyncState.PENDING, "next_attempt_at": None, "leased_until": None})
    return _row_done(row, now=now)


def _stripe_customer_id(*, customer_pk: int, gateway: StripeGateway, now: datetime) -> str:
    """The customer's Stripe id, onboarding it inline when the onboarding task has not run yet."""
    row, _ = StripeCustomer.objects.get_or_create(customer_id=customer_pk)
    if row.deleted_at is not None:
        raise GatewayError(f"The Stripe customer {row.stripe_customer_id} was deleted in Stripe.", retryable=False)
    if not row.stripe_customer_id:
        _customer_push(row, gateway)
        _row_done(row, now=now)
    assert row.stripe_customer_id
    return row.stripe_customer_id


# --- invoices (mode tollgate_invoices) --------------------------------------------------------------
def stripe_invoice_sync_schedule(*, invoice: Invoice) -> StripeInvoiceSync | None:
    """A finalized invoice of a plan billed with Tollgate invoices: record the push, run it after commit."""
    if invoice.kind != Invoice.Kind.INVOICE or invoice.status == Invoice.Status.DRAFT:
        return None
    if plan_billing_mode(plan=invoice.plan) != BillingMode.TOLLGATE_INVOICES:
        return None
    row, _ = StripeInvoiceSync.objects.get_or_create(invoice=invoice)
    if row.state != SyncState.SYNCED and stripe_enabled():
        queue_after_commit("payments.invoice_push", invoice.pk)
    return row


def _days_until_due(customer_pk: int) -> int | None:
    """None (charge automatically) for a customer with a default payment method; otherwise the due days of
    an invoice Stripe sends (a first charge attempt without a card would only fail)."""
    card = StripeCustomer.objects.filter(customer_id=customer_pk).values_list("default_payment_method", flat=True).first()
    return None if card else int(settings.STRIPE_DAYS_UNTIL_DUE)


CREDITS_POSITION, TAX_POSITION = -1, -2  # the Stripe items that are no invoice line: credits applied, tax


class InvoiceMismatch(GatewayError):
    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False, code="amount_mismatch")


def _invoice_items(invoice: Invoice) -> list[tuple[int, int, str]]:
    """(position, amount in minor units, description) per Stripe invoice item: every line as priced (but a
    zero line, which changes nothing and only clutters the customer's Stripe invoice), plus one item for
    applied prepaid credits when the lines do not already carry them, and one (``TAX_POSITION``) for the
    invoice's tax, computed once on the invoice (never per line, so never by Stripe)."""
    lines = list(invoice.lines.order_by("position"))
    items = [(line.position, line.amount_minor, line.description) for line in lines if line.amount_minor]
    tax = invoice.tax_minor or 0
    if tax:
        rate = decimal_to_text(invoice.tax_rate) if invoice.tax_rate is not None else "0"
        items.append((TAX_POSITION, tax, f"{settings.TOLLGATE_TAX_LABEL} {rate}%"))
    lines_total = sum(amount for _, amount, _ in items)
    if lines_total == invoice.total_minor:
        return items
    if invoice.credits_minor and lines_total - invoice.credits_minor == invoice.total_minor:
        return [*items, (CREDITS_POSITION, -invoice.credits_minor, "Prepaid credits applied")]
    raise InvoiceMismatch(f"Invoice {invoice}: lines add up to {lines_total}, total is {invoice.total_minor} (minor units).")


STATUS_RANK = {"": 0, "draft": 1, "open": 2, "uncollectible": 3, "paid": 4, "void": 4}


def forward_status(current: str, new: str) -> str:
    """Stripe's invoice status only moves forward: a late ``invoice.finalized`` never undoes ``paid``."""
    return new if STATUS_RANK.get(new, 0) > STATUS_RANK.get(current, 0) else current


def stripe_invoice_push(*, invoice_pk: int, now: datetime | None = None) -> StripeInvoiceSync | None:
    """Make Stripe hold this invoice: created, every line on it, the same total, finalized; then follow
    Tollgate's own later status (paid out of band, uncollectible, void)."""
    now = now or timezone.now()
    row = StripeInvoiceSync.objects.filter(invoice_id=invoice_pk).first()
    if row is None or row.state == SyncState.SYNCED or not _lease_take(row, now=now):
        return row
    try:
        invoice = Invoice.objects.select_related("customer").get(pk=invoice_pk)
        if not row.stripe_invoice_id and invoice.status != Invoice.Status.FINALIZED:
            # settled in Tollgate (paid elsewhere, void, uncollectible) before it reached Stripe: nothing to collect
            return _row_done(row, now=now)
        items = _invoice_items(invoice)
        gateway = gateway_get()
        customer_id = _stripe_customer_id(customer_pk=invoice.customer_id, gateway=gateway, now=now)
        if not row.stripe_invoice_id:
            remote = gateway.invoice_find(stripe_customer_id=customer_id, invoice_pk=invoice.pk) or gateway.invoice_create(
                invoice_pk=invoice.pk, stripe_customer_id=customer_id, currency=invoice.currency,
                number=invoice.number or "", description=f"Tollgate invoice {invoice.number}",
                days_until_due=_days_until_due(invoice.customer_id))
            _row_save(row, {"stripe_invoice_id": remote.id, "stripe_status": forward_status(row.stripe_status, remote.status)})
        assert row.stripe_invoice_id
        pushed = set(row.items.values_list("position", flat=True))
        for position, amount_minor, description in items:
            if position in pushed:
                continue
            item_id = gateway.invoice_item_create(invoice_pk=invoice.pk, position=position, stripe_customer_id=customer_id,
                                                  stripe_invoice_id=row.stripe_invoice_id, amount_minor=amount_minor,
                                                  currency=invoice.currency, description=description)
            StripeInvoiceItem.objects.create(sync=row, position=position, stripe_item_id=item_id, amount_minor=amount_minor)
        status = row.stripe_status
        if STATUS_RANK.get(status, 0) < STATUS_RANK["open"]:  # not finalized by an earlier push yet
            remote = gateway.invoice_retrieve(stripe_invoice_id=row.stripe_invoice_id)
            total = remote.total_minor
            status = forward_status(status, remote.status)
            if remote.status == "draft":
                if remote.total_minor != invoice.total_minor:
                    raise InvoiceMismatch(f"Stripe invoice {remote.id} totals {remote.total_minor}, ours {invoice.total_minor}.")
                remote = gateway.invoice_finalize(invoice_pk=invoice.pk, stripe_invoice_id=row.stripe_invoice_id,
                                                  collect=invoice.status == Invoice.Status.FINALIZED)
                # a finalize Stripe accepted leaves the invoice at least open (paid at once when nothing is due)
                status = forward_status(forward_status(status, "open"), remote.status)
            _row_save(row, {"stripe_status": status, "stripe_total_minor": total,
                            "hosted_invoice_url": remote.hosted_invoice_url or row.hosted_invoice_url})
        status = _invoice_status_follow(row, invoice, gateway, status)
    except GatewayError as exc:
        return _row_error(row, exc, now=now)
    if Invoice.objects.filter(pk=invoice_pk).values_list("status", flat=True).first() != invoice.status:
        # settled in Tollgate while we pushed (its own task found the lease taken): due again, now
        return _row_save(row, {"stripe_status": status, "state": SyncState.PENDING, "next_attempt_at": None,
                               "leased_until": None})
    return _row_done(row, now=now, stripe_status=status)


def _invoice_status_follow(row: StripeInvoiceSync, invoice: Invoice, gateway: StripeGateway, status: str) -> str:
    """Tollgate settled the invoice itself (a payment by wire, a write-off, a void): Stripe must stop
    collecting it. A Stripe invoice already paid or void cannot follow: that is a conflict for a person."""
    assert row.stripe_invoice_id
    wanted = invoice.status
    if wanted == Invoice.Status.FINALIZED or wanted == status:
        return status
    if status in ("paid", "void"):
        raise GatewayError(f"Tollgate marked invoice {invoice} {wanted}, but the Stripe invoice is {status}: "
                           "settle it by hand (a refund or a credit note).", retryable=False, code="status_conflict")
    pk, stripe_id = invoice.pk, row.stripe_invoice_id
    if wanted == Invoice.Status.VOID:
        gateway.invoice_void(invoice_pk=pk, stripe_invoice_id=stripe_id)
    elif wanted == Invoice.Status.PAID:
        gateway.invoice_pay_out_of_band(invoice_pk=pk, stripe_invoice_id=stripe_id)
    elif wanted == Invoice.Status.UNCOLLECTIBLE and status == "open":
        gateway.invoice_mark_uncollectible(invoice_pk=pk, stripe_invoice_id=stripe_id)
    else:
        return status
    return forward_status(status, wanted)


def stripe_invoice_status_changed(*, invoice: Invoice) -> StripeInvoiceSync | None:
    """Tollgate changed a pushed invoice's status: unless Stripe told us first (a webhook), push it again."""
    row = StripeInvoiceSync.objects.filter(invoice=invoice).first()
    if row is None or row.stripe_status == invoice.status:
        return row
    _row_save(row, {"state": SyncState.PENDING, "next_attempt_at": None})
    return stripe_invoice_sync_schedule(invoice=invoice)


# --- the beat task's sweep ---------------------------------------------------------------------------
def _due(model: type[SyncRowT], now: datetime, limit: int) -> list[int]:
    query = model._default_manager.filter(state=SyncState.PENDING).filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)).filter(
        Q(leased_until__isnull=True) | Q(leased_until__lt=now))
    pk_field = model._meta.pk
    assert pk_field is not None
    return list(query.order_by("pk").values_list(pk_field.attname, flat=True)[:limit])


def _each(what: str, pks: list[int], push: Callable[[int], bool]) -> int:
    """``push(pk)`` for each row, oldest first; how many synced. Stripe's failures are the rows' own state
    (GatewayError, retried with backoff); anything else a row raises is logged and the sweep goes on, so
    one row that fails the same way every time never holds back the rows after it."""
    synced = 0
    for pk in pks:
        try:
            synced += push(pk)
        except Exception:
            log.exception("stripe %s %s failed", what, pk)
    return synced
