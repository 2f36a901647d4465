"""The daily reconciliation: each pushed invoice as Stripe holds it, compared with ours. Webhooks can be
missed for good (an endpoint down longer than Stripe retries, a deleted endpoint), and a person can change
an invoice in Stripe's dashboard; either shows here as drift on the invoice's sync row, in the console.
Nothing is changed: drift is for a person to look at (docs/payments.md "Reconciliation")."""

from __future__ import annotations

import logging
from datetime import datetime

from django.db.models import F
from django.utils import timezone

from billing.invoicing.models import Invoice
from billing.payments.gateway import GatewayError, gateway_get
from billing.payments.models import StripeInvoiceSync, SyncState
from billing.payments.services import _row_save, stripe_enabled

log = logging.getLogger(__name__)
# Stripe's invoice status -> the Tollgate status it means
TOLLGATE_STATUS = {"open": Invoice.Status.FINALIZED, "paid": Invoice.Status.PAID, "void": Invoice.Status.VOID,
                   "uncollectible": Invoice.Status.UNCOLLECTIBLE}


def invoice_drift(row: StripeInvoiceSync, invoice: Invoice, *, status: str, total_minor: int) -> str:
    """What differs between Stripe's invoice (its status and total) and ours ('' nothing)."""
    problems = []
    if status != row.stripe_status:
        problems.append(f"Stripe status {status}, recorded {row.stripe_status or 'none'}")
    if total_minor != invoice.total_minor:
        problems.append(f"Stripe total {total_minor}, ours {invoice.total_minor} (minor units)")
    expected = TOLLGATE_STATUS.get(status)
    if expected is not None and invoice.status != expected:
        problems.append(f"Stripe {status} but the Tollgate invoice is {invoice.status}")
    return "; ".join(problems)


def stripe_invoices_reconcile(*, now: datetime | None = None, limit: int = 500) -> dict[str, int]:
    """Check the pushed invoices least recently checked first (``limit`` a run: a large account is covered
    over several days). An outage stops the run; the next one goes on from where it stopped."""
    now = now or timezone.now()
    done = {"checked": 0, "drift": 0}
    if not stripe_enabled():
        return done
    gateway = gateway_get()
    rows = (StripeInvoiceSync.objects.filter(state=SyncState.SYNCED, stripe_invoice_id__isnull=False)
            .select_related("invoice").order_by(F("reconciled_at").asc(nulls_first=True), "pk"))
    for row in rows[:limit]:
        assert row.stripe_invoice_id
        try:
            remote = gateway.invoice_retrieve(stripe_invoice_id=row.stripe_invoice_id)
        except GatewayError as exc:
            if exc.retryable:
                log.warning("stripe reconciliation stopped by an outage: %s", exc)
                break
            drift = f"Stripe cannot show invoice {row.stripe_invoice_id}: {exc}"
        else:
            drift = invoice_drift(row, row.invoice, status=remote.status, total_minor=remote.total_minor)
        _row_save(row, {"drift": drift[:2000], "reconciled_at": now})
        done["checked"] += 1
        done["drift"] += bool(drift)
    return done
