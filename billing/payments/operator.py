"""The operator's retry of any sync row that failed or waits for its backoff (the console's payments page):
a Stripe customer, a meter hour, a Paystack payment link, a finalized invoice. The row is made due now and its push queued after
the commit; the push itself is the same idempotent one the tasks run (same keys, same identifiers)."""

from __future__ import annotations

from django.db import transaction

from billing.audit.services import audit_record
from billing.common.queue import queue_after_commit
from billing.invoicing.models import Invoice
from billing.payments.models import (
    MeterUsageReport,
    PaystackPayment,
    StripeCustomer,
    StripeInvoiceSync,
    SyncRow,
    SyncState,
)
from billing.payments.services import _row_save, stripe_invoice_sync_schedule

# kind -> (model, task, the task's argument from the row)
RETRYABLE: dict[str, tuple[type[SyncRow], str, str]] = {
    "customer": (StripeCustomer, "payments.customer_sync", "customer_id"),
    "meter-hour": (MeterUsageReport, "payments.meter_report_push", "pk"),
    "paystack-link": (PaystackPayment, "payments.paystack_link", "invoice_id"),
}


def sync_row_retry(*, kind: str, pk: int) -> SyncRow | None:
    """Due now and pushed after commit; None for an unknown row or one already synced."""
    if kind not in RETRYABLE:
        return None
    model, task, argument = RETRYABLE[kind]
    row = model._default_manager.filter(pk=pk).first()
    if row is None or row.state == SyncState.SYNCED:
        return None
    _row_save(row, {"state": SyncState.PENDING, "next_attempt_at": None, "leased_until": None})
    value = getattr(row, argument)
    queue_after_commit(task, value)
    return row


@transaction.atomic
def stripe_invoice_sync_retry(*, invoice: Invoice, actor: str = "") -> StripeInvoiceSync | None:
    """The operator's retry: due now, pushed after commit (in the audit log when there was a push to retry)."""
    row = StripeInvoiceSync.objects.filter(invoice=invoice).first()
    if row is not None and row.state != SyncState.SYNCED:
        _row_save(row, {"state": SyncState.PENDING, "next_attempt_at": None, "leased_until": None})
    scheduled = stripe_invoice_sync_schedule(invoice=invoice)
    if scheduled is not None:
        audit_record(action="invoice.push_retried", obj=invoice, actor=actor,
                     after={"sync_state": scheduled.state, "attempts": scheduled.attempts})
    return scheduled
