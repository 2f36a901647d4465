"""Invoice writes: drafts kept current, period close, finalization, payment states, credit notes.

Every write locks the invoice row first (``select_for_update``), so concurrent finalizations, refreshes
and status changes serialise on it; the unique constraint on (customer, period) makes the draft's
creation race-free. Numbers come from ``InvoiceSequence`` locked in the finalizing transaction: a
rollback never burns a number, so the sequence has no gaps.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet

from billing.audit.services import audit_record, snapshot
from billing.catalog import money
from billing.catalog.models import Subscription
from billing.common.calendar import period_bounds, previous_period
from billing.common.errors import DomainError
from billing.customers.models import Customer
from billing.invoicing import periods
from billing.invoicing.compute import Computed, invoice_compute, subscription_for_period
from billing.invoicing.errors import InvoicingCode
from billing.invoicing.models import Invoice, InvoiceLine, InvoiceSequence, PeriodClose
from billing.invoicing.rows import events_digest
from billing.invoicing.selectors import invoice_parties
from billing.invoicing.signals import invoice_finalized, invoice_status_changed
from billing.invoicing.snapshot import PeriodSnapshot, period_snapshot

log = logging.getLogger(__name__)
PREFIXES = {"invoice": "INV-", "credit_note": "CN-"}


AUDITED = ("kind", "status", "number", "customer", "period_start", "period_end", "currency", "subtotal_minor",
           "credits_minor", "total_minor", "corrects", "reason", "finalized_at", "paid_at", "voided_at")


def _audit(action: str, invoice: Invoice, actor: str, before: dict[str, object] | None) -> None:
    audit_record(action=action, obj=invoice, before=before, after=snapshot(invoice, fields=AUDITED), actor=actor)


def _locked(pk: int) -> Invoice:
    return Invoice.objects.select_for_update().get(pk=pk)


def _period_invoices(customer: Customer, start: datetime, *, lock: bool = False) -> QuerySet[Invoice]:
    """The period's invoice (one per customer and period), as a queryset; ``lock``: FOR UPDATE."""
    invoices = Invoice.objects.filter(customer=customer, period_start=start, kind=Invoice.Kind.INVOICE).order_by()
    return invoices.select_for_update() if lock else invoices


def _draft_for(*, customer: Customer, start: datetime, end: datetime, currency: str) -> Invoice:
    """The period's invoice, created as an empty draft if missing."""
    existing = _period_invoices(customer, start).first()
    return existing if existing is not None else _draft_insert(customer=customer, start=start, end=end,
                                                               currency=currency)


def _draft_insert(*, customer: Customer, start: datetime, end: datetime, currency: str, lock: bool = False,
                  computed: Computed | None = None, digest: str | None = None) -> Invoice:
    """The period's first draft: empty, or with ``computed``'s figures and lines inserted whole. A
    concurrent caller that created it first wins: its draft is returned (locked, with ``lock``)."""
    try:
        with transaction.atomic():
            invoice = Invoice(customer=customer, period_start=start, period_end=end, currency=currency)
            if computed is not None:
                _set_figures(invoice, computed, digest)
            invoice.save()
            if computed is not None:
                _add_lines(invoice, computed)
            return invoice
    except IntegrityError:
        return _period_invoices(customer, start, lock=lock).get()


def _write(invoice: Invoice, computed: Computed, digest: str | None = None) -> None:
    """Replace a draft's lines and figures with ``computed`` (the invoice row is locked by the caller)."""
    InvoiceLine.objects.filter(invoice=invoice).delete()
    _add_lines(invoice, computed)
    _set_figures(invoice, computed, digest)


def _add_lines(invoice: Invoice, computed: Computed) -> None:
    InvoiceLine.objects.bulk_create([
        InvoiceLine(invoice=invoice, position=index, kind=line.kind, description=line.description[:300],
                    meter=line.meter, model=line.model, quantity=line.quantity, unit_price=line.unit_price,
                    amount=line.amount, amount_minor=line.amount_minor, detail=line.detail)
        for index, line in enumerate(computed.lines, start=1)
    ])


def _set_figures(invoice: Invoice, computed: Computed, digest: str | None = None) -> None:
    invoice.plan = computed.plan
    invoice.currency = computed.currency
    invoice.subtotal_minor = computed.subtotal_minor
    invoice.credits_minor = computed.credits_minor
    invoice.total_minor = computed.total_minor
    invoice.versions = computed.versions
    invoice.rollup_watermark = computed.watermark
    invoice.tax_rate = computed.tax.rate
    invoice.tax_note = computed.tax.note
    invoice.tax_minor = computed.tax_minor
    invoice.lines_digest = digest or computed.digest()


@transaction.atomic
def invoice_draft_refresh(*, customer: Customer, period_start: datetime, snapshot: PeriodSnapshot | None = None
                          ) -> Invoice | None:
    """Bring the period's draft up to date with the usage so far (no-op once finalized). None when the
    customer has no plan for the period. ``snapshot``: the period's shared reads, for a batch of customers
    (``drafts_refresh``; billing/invoicing/snapshot.py)."""
    start, end = period_bounds(period_start)
    if snapshot is not None and snapshot.start != start:
        raise ValueError(f"a snapshot of the period from {snapshot.start} cannot refresh the one from {start}")
    computed = invoice_compute(customer=customer, start=start, end=end, snapshot=snapshot)
    if computed is None:
        return None
    digest = computed.digest()
    # Nothing new (most refreshes of a period: the beat refreshes every draft every ten minutes): found
    # without a lock, so the transaction writes nothing at all, not even a row lock (which PostgreSQL logs,
    # and the commit then waits for the log's flush). A refresh that computed something else takes the lock.
    stored = _period_invoices(customer, start).first() if snapshot is None else snapshot.invoices.get(customer.pk)
    if stored is not None and (stored.status != Invoice.Status.DRAFT or stored.lines_digest == digest):
        return stored
    # the period's first draft is inserted whole (figures and lines, so its digest is current), not created
    # empty and then rewritten
    invoice = _locked(stored.pk) if stored is not None else _draft_insert(
        customer=customer, start=start, end=end, currency=computed.currency, lock=True, computed=computed,
        digest=digest)
    if invoice.status != Invoice.Status.DRAFT or invoice.lines_digest == digest:
        return invoice  # final, or nothing changed since the last refresh: no write
    _write(invoice, computed, digest)
    invoice.save()
    return invoice


def drafts_refresh(*, now: datetime) -> int:
    """Refresh the draft of every subscribed customer for each period still open at ``now``. A customer
    whose refresh fails (a lost dimension set, a bug in one plan's pricing) is logged and skipped, as in
    ``periods_finalize``: the others' drafts stay current, and the next run tries it again. Returns how
    many drafts were refreshed."""
    count = 0
    open_starts = [period_bounds(now)[0]]
    previous_start, previous_end = previous_period(open_starts[0])
    if previous_end > periods.closed_until() and now < previous_end + periods.grace():
        open_starts.insert(0, previous_start)  # last month, still in its grace time
    for start in open_starts:
        snapshot = period_snapshot(start=start, end=period_bounds(start)[1])
        for customer in snapshot.customers:
            try:
                if invoice_draft_refresh(customer=customer, period_start=start, snapshot=snapshot) is not None:
                    count += 1
            except Exception:  # its own transaction rolled back; the next run retries
                log.exception("refreshing the %s draft of %s failed", start.date(), customer.external_id)
    return count


def _next_number(kind: str) -> str:
    sequence, _ = InvoiceSequence.objects.get_or_create(name=kind, defaults={"prefix": PREFIXES[kind]})
    sequence = InvoiceSequence.objects.select_for_update().get(pk=sequence.pk)
    sequence.last += 1
    sequence.save(update_fields=["last"])
    return f"{sequence.prefix}{sequence.last:06d}"


def invoice_finalize(*, invoice: Invoice, now: datetime, actor: str = "system") -> Invoice:
    """Freeze the invoice: recompute it one last time, number it, store the versions and the event-set
    hash. Idempotent: an invoice already finalized (or beyond) is returned unchanged. Only a closed
    period can be finalized (later events for it are refused, so the figures are final)."""
    if invoice.kind != Invoice.Kind.INVOICE:
        return invoice
    if invoice.period_end > periods.closed_until():
        raise DomainError(InvoicingCode.PERIOD_OPEN, "This invoice's period is still open: it is finalized after its "
                                                     f"end plus the grace time ({periods.grace()}) by close_periods.")
    with transaction.atomic():
        invoice = _locked(invoice.pk)
        if invoice.status != Invoice.Status.DRAFT:
            return invoice
        before = snapshot(invoice, fields=AUDITED)
        computed = invoice_compute(customer=invoice.customer, start=invoice.period_start, end=invoice.period_end)
        if computed is None:
            raise DomainError(InvoicingCode.NO_SUBSCRIPTION, "The customer had no plan in this period.")
        _write(invoice, computed)
        invoice.events_hash, invoice.events_count = events_digest(
            customer=invoice.customer, start=invoice.period_start, end=invoice.period_end)
        invoice.number = _next_number("invoice")
        invoice.status = Invoice.Status.FINALIZED
        invoice.finalized_at = now
        invoice.due_at = now + timedelta(days=settings.TOLLGATE_PAYMENT_TERMS_DAYS)
        invoice.parties = invoice_parties(invoice=invoice)
        invoice.save()
        _audit("invoice.finalized", invoice, actor, before)
        pk = invoice.pk
        transaction.on_commit(lambda: invoice_finalized.send(sender=Invoice, invoice_id=pk))
    return invoice


def periods_close(*, now: datetime) -> list[tuple[datetime, datetime]]:
    """Close every period whose end plus grace has passed (from the first subscription on). Returns
    the periods this call closed."""
    first = Subscription.objects.order_by("start").values_list("start", flat=True).first()
    if first is None:
        return []
    return [(start, end) for start, end in periods.closable_period_ends(now=now, first_start=first)
            if periods.period_close(start=start, end=end, now=now)]


def periods_finalize(*, now: datetime) -> list[Invoice]:
    """Finalize the invoices of every closed period (closed at least the finalize delay before ``now``):
    each subscribed customer's draft is created if missing, then finalized. Safe to run again."""
    delay = timedelta(seconds=settings.TOLLGATE_FINALIZE_DELAY_SECONDS)
    done = []
    for closed in PeriodClose.objects.filter(closed_at__lte=now - delay).order_by("period_start"):
        start, end = closed.period_start, closed.period_end
        customers = Customer.objects.filter(
            pk__in=Subscription.objects.filter(Q(end__isnull=True) | Q(end__gt=start), start__lt=end)
            .values("customer_id")).order_by("pk")
        finalized = set(Invoice.objects.filter(period_start=start, kind=Invoice.Kind.INVOICE)
                        .exclude(status=Invoice.Status.DRAFT).values_list("customer_id", flat=True))
        for customer in customers:
            if customer.pk in finalized:
                continue
            subscription = subscription_for_period(customer=customer, start=start, end=end)
            if subscription is None:
                continue
            try:
                draft = _draft_for(customer=customer, start=start, end=end, currency=subscription.plan.currency)
                done.append(invoice_finalize(invoice=draft, now=now))
            except Exception:  # one customer's failure must not stop the others; the next run retries
                log.exception("finalizing %s for %s failed", start.date(), customer.external_id)
    return done


def _move(invoice: Invoice, to: str, allowed: set[str], now: datetime, actor: str, stamp: str | None) -> Invoice:
    with transaction.atomic():
        invoice = _locked(invoice.pk)
        if invoice.status == to:
            return invoice  # idempotent: a repeated webhook or click changes nothing
        if invoice.status not in allowed:
            raise DomainError(InvoicingCode.INVALID_INVOICE_STATE, f"A {invoice.status} invoice cannot become {to}.")
        before = snapshot(invoice, fields=AUDITED)
        invoice.status = to
        if stamp:
            setattr(invoice, stamp, now)
        invoice.save(update_fields=["status", "updated_at"] + ([stamp] if stamp else []))
        _audit(f"invoice.{to}", invoice, actor, before)
        pk = invoice.pk
        transaction.on_commit(lambda: invoice_status_changed.send(sender=Invoice, invoice_id=pk, status=to))
    return invoice


def invoice_mark_paid(*, invoice: Invoice, at: datetime, actor: str = "system") -> Invoice:
    return _move(invoice, Invoice.Status.PAID, {Invoice.Status.FINALIZED, Invoice.Status.UNCOLLECTIBLE}, at, actor,
                 "paid_at")


def invoice_mark_uncollectible(*, invoice: Invoice, at: datetime, actor: str = "system") -> Invoice:
    return _move(invoice, Invoice.Status.UNCOLLECTIBLE, {Invoice.Status.FINALIZED}, at, actor, None)


def invoice_void(*, invoice: Invoice, at: datetime, reason: str = "", actor: str = "system") -> Invoice:
    """Void a finalized (or uncollectible) invoice: its status becomes void and a credit note for its full
    total is issued, numbered, referencing it. The invoice's figures never change. Idempotent."""
    with transaction.atomic():
        locked = _locked(invoice.pk)
        if locked.status == Invoice.Status.DRAFT:
            raise DomainError(InvoicingCode.INVALID_INVOICE_STATE,
                              "A draft is not an invoice yet: there is nothing to void.")
        voided = _move(locked, Invoice.Status.VOID, {Invoice.Status.FINALIZED, Invoice.Status.UNCOLLECTIBLE}, at, actor,
                       "voided_at")
        if not Invoice.objects.filter(corrects=voided, kind=Invoice.Kind.CREDIT_NOTE).exists():
            credit_note_issue(invoice=voided, amount_minor=voided.total_minor, reason=reason or "Invoice voided", at=at)
    return voided


def credit_note_issue(*, invoice: Invoice, amount_minor: int, reason: str, at: datetime) -> Invoice:
    """A numbered credit note against a finalized invoice (the only way a final figure changes)."""
    with transaction.atomic():
        note = Invoice.objects.create(
            customer=invoice.customer, plan=invoice.plan, kind=Invoice.Kind.CREDIT_NOTE, period_start=invoice.period_start,
            period_end=invoice.period_end, currency=invoice.currency, corrects=invoice, reason=reason[:200])
        InvoiceLine.objects.create(invoice=note, position=1, kind=InvoiceLine.Kind.CREDIT,
                                   description=f"Credit for invoice {invoice.number}: {reason}"[:300],
                                   quantity=1, amount=-_major(amount_minor, invoice.currency),
                                   amount_minor=-amount_minor, detail={"invoice": invoice.number})
        note.subtotal_minor = note.total_minor = -amount_minor
        note.number = _next_number("credit_note")
        note.status = Invoice.Status.FINALIZED
        note.finalized_at = at
        note.parties = invoice_parties(invoice=note)
        note.save()
        _audit("credit_note.issued", note, "", None)
    return note


def _major(minor: int, currency: str) -> Decimal:
    return money.from_minor(minor, currency)
