"""The beat task's sweep of the Stripe rows: push everything that is due."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from billing.customers.models import Customer
from billing.invoicing.models import Invoice
from billing.payments.meters import report_pusher
from billing.payments.models import BillingMode, MeterUsageReport, StripeCustomer, StripeInvoiceSync, SyncState
from billing.payments.services import (
    _due,
    _each,
    plan_billing_mode,
    stripe_customer_sync,
    stripe_enabled,
    stripe_invoice_push,
)


def stripe_sync_pending(*, now: datetime | None = None, limit: int = 200) -> dict[str, int]:
    """Push everything that is due: rows that never got their task (a lost message, a crash, Stripe
    switched on later) and rows waiting for their retry after a retryable failure."""
    now = now or timezone.now()
    if not stripe_enabled():
        return {}
    for customer in Customer.objects.filter(stripe__isnull=True)[:limit]:
        StripeCustomer.objects.get_or_create(customer=customer)
    finalized = Invoice.objects.filter(kind=Invoice.Kind.INVOICE, stripe_sync__isnull=True).exclude(
        status=Invoice.Status.DRAFT).select_related("plan")
    for invoice in finalized[:limit]:
        if plan_billing_mode(plan=invoice.plan) == BillingMode.TOLLGATE_INVOICES:
            StripeInvoiceSync.objects.get_or_create(invoice=invoice)

    def sync_customer(pk: int) -> bool:
        row = StripeCustomer.objects.get(pk=pk)
        return stripe_customer_sync(customer_pk=row.customer_id, now=now).state == SyncState.SYNCED

    def push_invoice(invoice_pk: int) -> bool:
        row = stripe_invoice_push(invoice_pk=invoice_pk, now=now)
        return bool(row and row.state == SyncState.SYNCED)

    return {"customers": _each("customer sync, row", _due(StripeCustomer, now, limit), sync_customer),
            "invoices": _each("invoice push, invoice", _due_invoices(now, limit), push_invoice),
            "meter_reports": _each("meter usage push, report", _due(MeterUsageReport, now, limit), report_pusher(now))}


def _due_invoices(now: datetime, limit: int) -> list[int]:
    pks = _due(StripeInvoiceSync, now, limit)
    return list(StripeInvoiceSync.objects.filter(pk__in=pks).order_by("pk").values_list("invoice_id", flat=True))
