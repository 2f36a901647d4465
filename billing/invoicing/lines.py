"""A period's invoice lines, priced from usage: the one pricing engine behind invoices and the upcoming
invoice (compute.py) and the console's simulation.

Each event is priced by the rate-card version in effect at its ``usage_at``. Tiers are cumulative over
the whole period, so when a version changes mid-period the units of each version's stretch are priced
*marginally*: ``F_v(Q_before + q) - F_v(Q_before)`` where ``F_v`` is that version's charge function
and ``Q_before`` the period's quantity before the stretch (docs/pricing.md). Meters that do not add up
(max, unique_count, latest) are priced once on the whole period's value with the version in effect at
the period's last instant. Charges are matched across versions by (meter, filter).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing.catalog import money, pricing, ratecard
from billing.catalog.models import Meter, Plan, RateCardVersion, Subscription
from billing.catalog.selectors import versions_over
from billing.common.calendar import period_bounds
from billing.common.fields import decimal_to_text
from billing.customers.models import Customer
from billing.invoicing.rows import UsageTotal, meters_by_pk, period_rows
from billing.invoicing.snapshot import PeriodSnapshot

ADDITIVE = {Meter.Aggregation.SUM, Meter.Aggregation.COUNT}
log = logging.getLogger(__name__)


@dataclass
class Segment:
    start: datetime
    end: datetime
    card: ratecard.RateCard
    version: int | None  # None for a draft (simulation)


@dataclass
class Line:
    kind: str  # "charge" | "base_fee"
    description: str
    amount: Decimal  # exact
    currency: str
    meter: str | None = None
    filter: dict[str, str] | None = None
    model: str | None = None
    quantity: Decimal = Decimal(0)
    versions: list[int | None] = field(default_factory=list)
    tier: int | None = None  # 1-based, the last tier reached
    next_tier: dict[str, str] | None = None
    group: dict[str, str] | None = None  # markup dimension value
    unit_price: Decimal | None = None  # per_unit charges (and overage price of flat_overage)
    tiers: list[dict[str, str]] = field(default_factory=list)  # tiered models: units and amount per tier reached

    def as_dict(self) -> dict[str, Any]:
        rounded = money.round_to_minor(self.amount, self.currency)
        out: dict[str, Any] = {
            "kind": self.kind, "description": self.description, "meter": self.meter, "filter": self.filter,
            "model": self.model, "quantity": decimal_to_text(self.quantity), "amount": str(rounded),
            "amount_minor": money.to_minor(self.amount, self.currency), "versions": self.versions,
            "tier": self.tier, "next_tier": self.next_tier,
        }
        if self.group:
            out["group"] = self.group
        return out


@dataclass
class Estimate:
    """A period priced: its lines and, for the upcoming invoice (``compute.upcoming_invoice``), the prepaid
    credits and the tax its invoice would apply (none for a price alone, such as the console's simulation)."""

    customer: str
    plan: str
    currency: str
    period_start: datetime
    period_end: datetime
    lines: list[Line]
    credits_minor: int = 0
    tax_rate: Decimal = Decimal(0)  # percent
    tax_note: str | None = None
    tax_minor: int = 0

    @property
    def subtotal_minor(self) -> int:
        # totals are sums of rounded lines, never rounded again
        return sum(money.to_minor(line.amount, self.currency) for line in self.lines)

    @property
    def total_minor(self) -> int:
        """What the invoice asks for, as an invoice's ``total_minor``: subtotal - credits + tax."""
        return self.subtotal_minor - self.credits_minor + self.tax_minor

    def as_dict(self) -> dict[str, Any]:
        subtotal, total = self.subtotal_minor, self.total_minor

        def major(minor: int) -> str:
            return str(money.from_minor(minor, self.currency))

        return {
            "customer": self.customer, "plan": self.plan, "currency": self.currency,
            "period": {"start": _iso(self.period_start), "end": _iso(self.period_end)},
            "lines": [line.as_dict() for line in self.lines],
            "subtotal": major(subtotal), "subtotal_minor": subtotal,
            "credits": major(self.credits_minor), "credits_minor": self.credits_minor,
            "tax": major(self.tax_minor), "tax_minor": self.tax_minor, "tax_rate": decimal_to_text(self.tax_rate),
            "tax_note": self.tax_note,
            "total": major(total), "total_minor": total,
        }


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def subscription_segments(*, subscription: Subscription, start: datetime, end: datetime,
                          versions: list[RateCardVersion] | None = None) -> list[Segment]:
    """The rate-card versions of ``subscription``'s plan over the part of [start, end) it covers (``versions``:
    the plan's, oldest first, if already read)."""
    lo = max(start, subscription.start)
    hi = min(end, subscription.end) if subscription.end else end
    return [Segment(s, e, v.rate_card, v.number)
            for s, e, v in versions_over(plan=subscription.plan, start=lo, end=hi, versions=versions)]


def segment_cuts(segments: list[Segment]) -> list[datetime]:
    """Every boundary of ``segments``: rate-card changes, and where the subscription starts or ends inside
    the period. A rollup range spanning one would be priced (or dropped) as a whole."""
    return [seg.start for seg in segments] + [segments[-1].end] if segments else []


@dataclass
class Part:
    """One subscription's stretch of a period: its plan and that plan's rate-card versions over it."""

    plan: Plan
    segments: list[Segment]

    def covers(self, moment: datetime) -> bool:
        return bool(self.segments) and self.segments[0].start <= moment < self.segments[-1].end


def period_parts(*, customer: Customer, start: datetime, end: datetime, snapshot: PeriodSnapshot | None = None
                 ) -> list[Part]:
    """The subscriptions that cover part of [start, end), oldest first, each with its segments. A plan
    changed mid-period bills both stretches, each priced by its own plan (tiers count within a stretch).
    All in the currency of the last one (a mid-period change to another currency is refused when it is
    made: billing/catalog/services.py). ``snapshot``: the period's subscriptions and versions, read once
    for a batch of customers (billing/invoicing/snapshot.py)."""
    from django.db.models import Q

    if snapshot is not None:
        subscriptions = snapshot.subscriptions.get(customer.pk, [])
    else:
        subscriptions = list(Subscription.objects.select_related("plan")
                             .filter(Q(end__isnull=True) | Q(end__gt=start), customer=customer, start__lt=end)
                             .order_by("start"))
    if not subscriptions:
        return []
    currency = subscriptions[-1].plan.currency
    for other in (s for s in subscriptions if s.plan.currency != currency):  # made before the change was refused
        log.warning("customer %s: plan %s (%s) from %s is not billed on the %s invoice of %s", customer.external_id,
                    other.plan.key, other.plan.currency, other.start.isoformat(), currency, start.date())
    parts = [Part(s.plan, subscription_segments(subscription=s, start=start, end=end,
                                                versions=None if snapshot is None else snapshot.versions.get(s.plan_id, [])))
             for s in subscriptions if s.plan.currency == currency]
    return [part for part in parts if part.segments]


def period_cuts(parts: list[Part]) -> list[datetime]:
    return sorted({cut for part in parts for cut in segment_cuts(part.segments)})


def price_parts(*, customer: Customer, parts: list[Part], start: datetime, end: datetime, rows: list[UsageTotal],
                meters: dict[int, Meter] | None = None) -> list[Estimate]:
    """Each part priced on its own; with more than one plan in the period, charge lines name their plan."""
    estimates = [price_period(customer=customer, plan=part.plan, start=start, end=end, segments=part.segments,
                              rows=rows, meters=meters) for part in parts]
    if len({part.plan.pk for part in parts}) > 1:
        for part, estimate in zip(parts, estimates, strict=True):
            for line in estimate.lines:
                if line.kind == "charge":
                    line.description = f"{part.plan.name}: {line.description}"
    return estimates


def simulate(*, customer: Customer, plan: Plan, card: ratecard.RateCard, now: datetime) -> Estimate:
    """The open period priced as if ``card`` had been in effect all period (the console's draft)."""
    start, end = period_bounds(now)
    return price_period(customer=customer, plan=plan, start=start, end=end,
                        segments=[Segment(start, end, card, None)])


def price_period(*, customer: Customer, plan: Plan, start: datetime, end: datetime, segments: list[Segment],
                 rows: list[UsageTotal] | None = None, meters: dict[int, Meter] | None = None) -> Estimate:
    """Lines for [start, end) priced segment by segment. ``rows`` default to the period's rollups plus the
    raw events the rollups do not cover (billing/invoicing/rows.py)."""
    currency = plan.currency
    lines: list[Line] = []
    if not segments:
        return Estimate(customer.external_id, plan.key, currency, start, end, lines)
    base_fee = segments[0].card.base_fee
    if base_fee:
        # one period at the fee: the line says what the document prints (quantity 1, unit price the fee)
        lines.append(Line("base_fee", f"{plan.name} base fee", base_fee, currency, quantity=Decimal(1),
                          versions=[segments[0].version], unit_price=base_fee))
    by_pk = meters if meters is not None else meters_by_pk()
    if rows is None:
        rows, _ = period_rows(customer=customer, start=segments[0].start, end=segments[-1].end,
                              cuts=segment_cuts(segments), meters=by_pk)
    by_key = {m.key: m for m in by_pk.values()}
    rows = sorted(rows, key=lambda r: r.at)
    # charge identity across versions: (meter, filter)
    order: list[tuple[str, str]] = []
    state: dict[tuple[str, str], _ChargeState] = {}
    for segment in segments:
        seg_rows = [r for r in rows if segment.start <= r.at < segment.end]
        for charge in segment.card.charges:
            meter = by_key.get(charge.meter)
            if meter is None:
                continue
            key = (charge.meter, repr(sorted((charge.filter or {}).items())))
            if key not in state:
                order.append(key)
                state[key] = _ChargeState(charge, meter)
            entry = state[key]
            entry.charge = charge  # the newest version's charge describes the line
            entry.versions.append(segment.version)
            for group_value, values in _select(seg_rows, meter, charge).items():
                entry.groups[group_value].add(meter, values, charge, segment)
    for key in order:
        entry = state[key]
        charge, meter, markup = entry.charge, entry.meter, entry.charge.markup
        for group_value, group in sorted(entry.groups.items(), key=lambda item: str(item[0])):
            amount, priced = group.total(meter, charge)
            if markup:
                amount = pricing.with_markup(amount, markup.percent_for(group_value))
            lines.append(_line(charge, meter, group.quantity(meter), amount, priced, currency, entry.versions,
                               {markup.dimension: group_value} if markup and group_value is not None else None))
        if not entry.groups:
            lines.append(_line(charge, meter, Decimal(0), Decimal(0), pricing.price(Decimal(0), charge.spec), currency,
                               entry.versions, None))
    return Estimate(customer.external_id, plan.key, currency, start, end, lines)


@dataclass
class _ChargeState:
    """One charge (by meter and filter) across a period's segments: its markup groups' running totals."""

    charge: ratecard.Charge
    meter: Meter
    groups: defaultdict[str | None, _GroupState] = field(default_factory=lambda: defaultdict(_GroupState))
    versions: list[int | None] = field(default_factory=list)


def _line(charge: ratecard.Charge, meter: Meter, quantity: Decimal, amount: Decimal, priced: pricing.Priced,
          currency: str, versions: list[int | None], group: dict[str, str] | None) -> Line:
    filt = None if charge.filter is None else dict(charge.filter)
    label = charge.name or meter.name + (" (" + ", ".join(f"{k}={v}" for k, v in filt.items()) + ")" if filt else "")
    next_tier = None
    if priced.next_tier_at is not None and priced.next_tier_unit_price is not None:
        next_tier = {"starts_above": decimal_to_text(priced.next_tier_at),
                     "unit_price": decimal_to_text(priced.next_tier_unit_price)}
    unit_price = charge.line_unit_price
    return Line("charge", label, amount, currency, meter=meter.key, filter=filt, model=charge.model,
                quantity=quantity, versions=list(dict.fromkeys(versions)),
                tier=None if priced.tier_index is None else priced.tier_index + 1, next_tier=next_tier, group=group,
                unit_price=unit_price,
                tiers=[{"tier": str(index + 1), "units": decimal_to_text(units), "amount": decimal_to_text(value)}
                       for index, units, value in priced.tiers_used])


def _select(rows: list[UsageTotal], meter: Meter, charge: ratecard.Charge) -> dict[str | None, list[UsageTotal]]:
    """The rows of the charge's meter and filter, by markup group (all under None without a markup)."""
    wanted = charge.filter or {}
    markup = charge.markup
    out: dict[str | None, list[UsageTotal]] = defaultdict(list)
    for row in rows:
        if row.meter != meter.key:
            continue
        dims = row.dimensions
        if any(dims.get(k) != v for k, v in wanted.items()):
            continue
        out[dims.get(markup.dimension) if markup else None].append(row)
    return out


class _GroupState:
    """Cumulative quantity and marginal amount of one charge (and markup group) over the period."""

    def __init__(self) -> None:
        self.cumulative = Decimal(0)
        self.amount = Decimal(0)
        self.priced: pricing.Priced | None = None
        self.values: list[UsageTotal] = []
        self.last_charge: ratecard.Charge | None = None

    def add(self, meter: Meter, events: list[UsageTotal], charge: ratecard.Charge, segment: Segment) -> None:
        self.values.extend(events)
        self.last_charge = charge
        if meter.aggregation not in ADDITIVE:
            return
        added = sum((r.total for r in events), Decimal(0))
        spec = charge.spec
        before = pricing.price(self.cumulative, spec).amount
        self.cumulative += added
        self.priced = pricing.price(self.cumulative, spec)
        self.amount += self.priced.amount - before

    def quantity(self, meter: Meter) -> Decimal:
        if meter.aggregation in ADDITIVE:
            return self.cumulative
        return _non_additive(meter, self.values)

    def total(self, meter: Meter, charge: ratecard.Charge) -> tuple[Decimal, pricing.Priced]:
        if meter.aggregation in ADDITIVE:
            assert self.priced is not None
            return self.amount, self.priced
        priced = pricing.price(_non_additive(meter, self.values), (self.last_charge or charge).spec)
        return priced.amount, priced


def _non_additive(meter: Meter, rows: list[UsageTotal]) -> Decimal:
    if not rows:
        return Decimal(0)
    if meter.aggregation == Meter.Aggregation.MAX:
        return max((r.maximum for r in rows if r.maximum is not None), default=Decimal(0))
    if meter.aggregation == Meter.Aggregation.LATEST:
        latest = [r.latest for r in rows if r.latest is not None]
        return max(latest, key=lambda item: (item[0], item[1]))[2] if latest else Decimal(0)
    return Decimal(len(frozenset().union(*(r.uniques for r in rows))))


