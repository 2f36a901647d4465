"""The operator's "invoice now": close every period whose end plus grace has passed (as the beat would) and
bring each closed, unfinalized period's drafts up to date, so they can be reviewed and finalized by hand
instead of waiting for the beat's finalize delay."""

from __future__ import annotations

import logging
from datetime import datetime

from django.db.models import Q

from billing.audit.services import audit_record
from billing.catalog.models import Subscription
from billing.customers.models import Customer
from billing.invoicing.models import Invoice, PeriodClose
from billing.invoicing.services import invoice_draft_refresh, periods_close
from billing.usage.rollups import rollup_until_current

log = logging.getLogger(__name__)


def invoices_prepare(*, now: datetime, actor: str = "") -> list[Invoice]:
    """Close what is due and return the drafts of closed periods (created or refreshed). Finalizing stays
    a separate, deliberate step (``invoice_finalize``). Each period this call closed is in the audit log."""
    for start, end in periods_close(now=now):
        audit_record(action="period.closed", object_type="period", object_id=start.strftime("%Y-%m"), actor=actor,
                     after={"period_start": start, "period_end": end})
    rollup_until_current(now=now)
    drafts = []
    for closed in PeriodClose.objects.order_by("period_start"):
        start, end = closed.period_start, closed.period_end
        final = Invoice.objects.filter(period_start=start, kind=Invoice.Kind.INVOICE).exclude(
            status=Invoice.Status.DRAFT).values("customer_id")
        subscribed = Subscription.objects.filter(Q(end__isnull=True) | Q(end__gt=start), start__lt=end).values(
            "customer_id")
        for customer in Customer.objects.filter(pk__in=subscribed).exclude(pk__in=final).order_by("pk"):
            try:
                draft = invoice_draft_refresh(customer=customer, period_start=start)
            except Exception:  # its own transaction rolled back; one customer's failure must not stop the others
                log.exception("preparing the %s draft of %s failed", start.date(), customer.external_id)
                continue
            if draft is not None and draft.status == Invoice.Status.DRAFT:
                drafts.append(draft)
    return drafts
