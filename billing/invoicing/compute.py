"""An invoice's figures computed from usage: lines (base fee, charges, corrections, adjustments), credits
applied, totals in minor units, the rate-card versions used and the rollup watermark read.

Corrections are shown apart from the usage they correct. Tiers are cumulative over the period, so a
correction's amount is the difference it makes: with ``P`` the period's pricing, the charge line is
``P(usage without corrections)``, the correction line ``P(usage with same-period corrections) - P(usage
without)``, and the adjustment line (corrections of events in earlier, closed periods, booked on this
one) ``P(everything) - P(usage with same-period corrections)``. The three add up to ``P(everything)``.
Each line is then rounded once (billing/catalog/money.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from billing.catalog import money
from billing.catalog.models import Plan, Subscription
from billing.catalog.selectors import subscription_at
from billing.common.calendar import period_bounds, period_key
from billing.common.fields import decimal_to_text
from billing.customers.models import Customer
from billing.invoicing.lines import Estimate, Line, period_cuts, period_parts, price_parts
from billing.invoicing.rows import UsageTotal, correction_rows, meters_by_pk, period_rows
from billing.invoicing.snapshot import PeriodSnapshot
from billing.invoicing.tax import NO_TAX, TaxTerms, tax_terms


@dataclass
class LineData:
    kind: str
    description: str
    quantity: Decimal
    amount: Decimal
    amount_minor: int
    meter: str = ""
    model: str = ""
    unit_price: Decimal | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        return (self.kind, self.description, self.meter, self.amount_minor, decimal_to_text(self.quantity))


@dataclass
class Computed:
    plan: Plan
    currency: str
    lines: list[LineData]
    subtotal_minor: int
    credits_minor: int
    total_minor: int
    versions: list[int]
    watermark: int
    tax: TaxTerms = NO_TAX
    tax_minor: int = 0

    def digest(self) -> str:
        """SHA-256 of everything an invoice stores from this computation but the watermark."""
        lines = [[line.kind, line.description, line.meter, line.model, decimal_to_text(line.quantity),
                  None if line.unit_price is None else decimal_to_text(line.unit_price), decimal_to_text(line.amount),
                  line.amount_minor, line.detail] for line in self.lines]
        body = [self.plan.pk, self.currency, self.subtotal_minor, self.credits_minor, self.total_minor, self.versions,
                lines, decimal_to_text(self.tax.rate), self.tax.note, self.tax_minor]
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def subscription_for_period(*, customer: Customer, start: datetime, end: datetime) -> Subscription | None:
    """The subscription billed for [start, end): the one in effect at the period's last instant, else the
    last one that overlapped the period."""
    from django.db.models import Q

    return (Subscription.objects.select_related("plan")
            .filter(Q(end__isnull=True) | Q(end__gt=start), customer=customer, start__lt=end)
            .order_by("-start").first())


def invoice_compute(*, customer: Customer, start: datetime, end: datetime, source: str = "rollups",
                    credits: int | None = None, snapshot: PeriodSnapshot | None = None,
                    tax: TaxTerms | None = None) -> Computed | None:
    """The invoice for [start, end) from rollups (``source="rollups"``) or raw events only (``"raw"``,
    the replay). ``credits`` (ledger units) overrides the wallet lookup (replays use the stored figure), and
    ``tax`` the customer's tax terms (replays use the invoice's).
    ``snapshot``: the period's catalog reads, shared by a batch of drafts (billing/invoicing/snapshot.py)."""
    parts = period_parts(customer=customer, start=start, end=end, snapshot=snapshot)
    if not parts:
        return None
    plan = parts[-1].plan
    meters = meters_by_pk() if snapshot is None else snapshot.meters
    rows, watermark = period_rows(customer=customer, start=start, end=end, cuts=period_cuts(parts), source=source,
                                  meters=meters)
    corrections = correction_rows(customer=customer, start=start, end=end, meters=meters)

    def priced(excluded: list[dict[str, Any]]) -> list[list[Line]]:
        # usage without the excluded corrections: add them back with the opposite sign (sum meters only)
        extra = [UsageTotal(c["meter"], c["dimensions"], c["at"], -c["quantity"], None, frozenset(), None) for c in excluded]
        return [estimate.lines for estimate in price_parts(customer=customer, parts=parts, start=start, end=end,
                                                           rows=rows + extra, meters=meters)]

    full = priced([])
    lines: list[LineData] = []
    same = [c for c in corrections if not c["adjustment"]]
    adjustments = [c for c in corrections if c["adjustment"]]
    if corrections:
        base = priced(corrections)
        with_same = priced(adjustments) if adjustments else full
        for part_lines in base:
            lines += _lines(part_lines, plan.currency)
        for index, part in enumerate(parts):
            lines += _delta_lines("correction", base[index], with_same[index],
                                  [c for c in same if part.covers(c["at"])], plan.currency)
        for index, part in enumerate(parts):
            lines += _delta_lines("adjustment", with_same[index], full[index],
                                  [c for c in adjustments if part.covers(c["at"])], plan.currency)
    else:
        for part_lines in full:
            lines += _lines(part_lines, plan.currency)
    subtotal = sum(line.amount_minor for line in lines)
    available = credits if credits is not None else credits_consumed(
        customer=customer, currency=plan.currency, start=start, consumed=None if snapshot is None else snapshot.consumed)
    credits_minor = max(0, min(subtotal, money.to_minor(Decimal(available).scaleb(-money.LEDGER_SCALE), plan.currency)))
    versions = sorted({seg.version for part in parts for seg in part.segments if seg.version is not None})
    # the plan's rate: its version in effect at the end of the billed plan's stretch, as for the base fee's plan
    terms = tax if tax is not None else tax_terms(customer=customer, plan_rate=parts[-1].segments[-1].card.tax_rate)
    taxed = money.tax_minor(subtotal - credits_minor, terms.rate, plan.currency)  # on what is left to pay
    return Computed(plan, plan.currency, lines, subtotal, credits_minor, subtotal - credits_minor + taxed, versions,
                    watermark, terms, taxed)


def upcoming_invoice(*, customer: Customer, now: datetime) -> Estimate | None:
    """The open period's invoice so far, as finalization would compute it from the same usage: this module's
    ``invoice_compute`` (the same lines, corrections apart, the prepaid credits the period's usage consumed
    and the tax on what is left, rounded once by ``money.tax_minor``), so the estimate a customer sees is the
    invoice they will get for that usage. None without a plan at ``now``."""
    subscription = subscription_at(customer=customer, at=now)
    if subscription is None:
        return None
    start, end = period_bounds(now)
    computed = invoice_compute(customer=customer, start=start, end=end)
    if computed is None:
        return None
    return Estimate(customer.external_id, subscription.plan.key, computed.currency, start, end,
                    [_estimate_line(line, computed.currency) for line in computed.lines],
                    credits_minor=computed.credits_minor, tax_rate=computed.tax.rate, tax_note=computed.tax.note,
                    tax_minor=computed.tax_minor)


def _estimate_line(line: LineData, currency: str) -> Line:
    """An invoice line back as the pricing's ``Line`` (what ``_describe`` put in its detail taken out again)."""
    detail = line.detail
    return Line(line.kind, line.description, line.amount, currency, meter=line.meter or None,
                filter=detail.get("filter"), model=line.model or None, quantity=line.quantity,
                versions=list(detail.get("versions", [])), tier=detail.get("tier"), next_tier=detail.get("next_tier"),
                group=detail.get("group"), unit_price=line.unit_price, tiers=list(detail.get("tiers", [])))


def _describe(line: Line) -> dict[str, Any]:
    detail: dict[str, Any] = {"versions": line.versions}
    for name in ("filter", "group", "tier", "next_tier"):
        if getattr(line, name):
            detail[name] = getattr(line, name)
    if line.tiers:
        detail["tiers"] = line.tiers
    return detail


def _lines(lines: list[Line], currency: str) -> list[LineData]:
    return [LineData(line.kind, line.description, line.quantity, line.amount, money.to_minor(line.amount, currency),
                     meter=line.meter or "", model=line.model or "", unit_price=line.unit_price, detail=_describe(line))
            for line in lines]


def _identity(line: Line) -> tuple[Any, ...]:
    return (line.kind, line.meter, repr(sorted((line.filter or {}).items())), repr(sorted((line.group or {}).items())))


def _delta_lines(kind: str, before: list[Line], after: list[Line], events: list[dict[str, Any]],
                 currency: str) -> list[LineData]:
    if not events:
        return []
    previous = {_identity(line): line for line in before}
    out = []
    for line in after:
        old = previous.get(_identity(line))
        if old is None or (old.amount == line.amount and old.quantity == line.quantity):
            continue
        delta_q, delta = line.quantity - old.quantity, line.amount - old.amount
        mine = [e for e in events if e["meter"] == line.meter]
        label = "Correction" if kind == "correction" else "Adjustment for an earlier period"
        detail: dict[str, Any] = {
            "corrects": sorted({e["corrects"] for e in mine})[:50],
            "events": sorted({e["event_id"] for e in mine})[:50],
        }
        if line.filter:
            detail["filter"] = line.filter
        if line.group:
            detail["group"] = line.group
        out.append(LineData(kind, f"{label}: {line.description}", delta_q, delta, money.to_minor(delta, currency),
                            meter=line.meter or "", model=line.model or "", detail=detail))
    return out


def credits_consumed(*, customer: Customer, currency: str, start: datetime,
                     consumed: dict[int, int] | None = None) -> int:
    """Prepaid credits the period's usage took from the customer's wallet at ingest, net of credit-backs
    (ledger units): the balance of the period's credits-consumed account (docs/ledger.md), credited by
    every credits leg of the period's usage (``USAGE_CREDITS``; reservation holds only while pending, and
    they are voided when settled) and debited by its credit-backs (``USAGE_CREDITS_REFUND``). One account
    lookup, whatever the usage. ``consumed``: the period's balances read for a batch of bills
    (``PeriodSnapshot.consumed``: account id -> balance; an account missing there has consumed nothing)."""
    from billing.guardrails import accounts as acc
    from ledger.backends import get_ledger

    period = period_key(start + timedelta(days=1))
    account_id = acc.Ids(customer.pk).consumed(currency, period)
    if consumed is not None:
        return consumed.get(account_id, 0)
    account = get_ledger().lookup_accounts([account_id]).get(account_id)
    return acc.consumed_balance(account) if account is not None else 0
