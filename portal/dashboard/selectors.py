"""Reads behind the customer dashboard. Usage comes from ``usage_aggregate`` (rollups plus the raw tail,
so an event shows as soon as it is stored), money from the upcoming-invoice estimate, credits and the
soft-limit alerts and thresholds from the guardrails; nothing here writes."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from billing.catalog.models import Meter
from billing.catalog.money import from_minor
from billing.catalog.ratecard import Limit
from billing.catalog.selectors import subscription_at, version_in_effect
from billing.common.calendar import period_bounds
from billing.common.errors import CommonCode, DomainError
from billing.customers.models import ApiKey, Customer, CustomerUser, Project
from billing.guardrails.models import Alert, AlertThreshold, Pause
from billing.guardrails.models import Run as GuardedRun
from billing.guardrails.pauses import pause_as_dict
from billing.guardrails.runs import run_detail
from billing.guardrails.selectors import (
    EffectiveThreshold,
    alert_thresholds_effective,
    alerts_list,
    budget_figures,
    card_in_effect,
    customer_balance,
    limit_figures,
)
from billing.invoicing.compute import upcoming_invoice
from billing.invoicing.lines import Estimate
from billing.invoicing.models import Invoice
from billing.payments.selectors import payment_links, plans_billed_by_stripe
from billing.usage.models import UsageEvent
from billing.usage.selectors import usage_aggregate
from portal.dashboard.costs import UnitCost, cost_of, filter_keys, unit_costs

DEFAULT_SOFT_PERCENT = Decimal(80)


@dataclass
class MeterGlance:
    key: str
    name: str
    unit: str
    used: Decimal
    hard: Decimal | None = None
    soft: Decimal | None = None

    @property
    def percent(self) -> float:
        return min(float(self.used / self.hard * 100), 100.0) if self.hard else 0.0

    @property
    def soft_percent(self) -> float | None:
        return float(self.soft / self.hard * 100) if self.hard and self.soft is not None else None

    @property
    def state(self) -> str:
        if self.hard is not None and self.used >= self.hard:
            return "hard"
        if self.soft is not None and self.used >= self.soft:
            return "soft"
        return "ok"


@dataclass
class Glance:
    customer: Customer
    now: datetime
    period_start: datetime
    period_end: datetime
    meters: list[MeterGlance]
    estimate: Estimate | None
    credits: list[dict[str, Any]]
    spend_cap: dict[str, Any] | None
    next_tiers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def days_left(self) -> int:
        return max(math.ceil((self.period_end - self.now).total_seconds() / 86400), 0)

    @property
    def total(self) -> Decimal | None:
        """The bill so far as its invoice would total it: prepaid credits and tax applied."""
        return from_minor(self.estimate.total_minor, self.estimate.currency) if self.estimate else None

    @property
    def subtotal(self) -> Decimal | None:
        return from_minor(self.estimate.subtotal_minor, self.estimate.currency) if self.estimate else None

    @property
    def credits_applied(self) -> Decimal | None:
        return from_minor(self.estimate.credits_minor, self.estimate.currency) if self.estimate else None

    @property
    def tax(self) -> Decimal | None:
        return from_minor(self.estimate.tax_minor, self.estimate.currency) if self.estimate else None


def _soft_limit(limit: Limit | None) -> Decimal | None:
    """The rate card's soft limit of a meter, else the default alert threshold's share of its hard limit."""
    if limit is None:
        return None
    if limit.has_soft:
        return limit.soft_limit
    return limit.hard * DEFAULT_SOFT_PERCENT / 100 if limit.hard is not None else None


def period_estimate(*, customer: Customer, now: datetime) -> Estimate | None:
    """The open period priced (the upcoming invoice): the one pricing of a dashboard request, which its
    glance, charts and breakdowns are all given."""
    return upcoming_invoice(customer=customer, now=now)


def glance(*, customer: Customer, now: datetime, estimate: Estimate | None) -> Glance:
    """The open period at a glance: usage per meter against its limits, the bill so far (``estimate``), the
    next tier thresholds, credits and the days left."""
    start, end = period_bounds(now)
    used = {row["meter"]: row["quantity"] for row in
            usage_aggregate(customer=customer, start=start, end=end, granularity="month")}
    subscription = subscription_at(customer=customer, at=now)
    version = version_in_effect(plan=subscription.plan, at=now) if subscription else None
    card = card_in_effect(customer_pk=customer.pk, card=version.rate_card) if version else None
    limits = {limit.meter: limit for limit in (card.limits if card else ())}
    meters = []
    for meter in Meter.objects.filter(key__in=set(used) | set(limits)).order_by("key"):
        limit = limits.get(meter.key)
        meters.append(MeterGlance(meter.key, meter.name, meter.unit, used.get(meter.key, Decimal(0)),
                                  limit.hard if limit else None, _soft_limit(limit)))
    balance = customer_balance(customer=customer, now=now)
    next_tiers = []
    for line in estimate.lines if estimate else []:
        if line.next_tier:
            starts_above = Decimal(line.next_tier["starts_above"])
            next_tiers.append({"description": line.description, "meter": line.meter, "quantity": line.quantity,
                               "tier": line.tier, "starts_above": starts_above,
                               "unit_price": Decimal(line.next_tier["unit_price"]),
                               "to_go": max(starts_above - line.quantity, Decimal(0))})
    return Glance(customer, now, start, end, meters, estimate, balance["credits"], balance["spend_cap"], next_tiers)


def attributed_costs(*, estimate: Estimate | None) -> list[UnitCost]:
    """The average unit price of each charge line of ``estimate`` so far (costs.py explains the attribution)."""
    return unit_costs(estimate)


def plan_currency(*, customer: Customer, now: datetime) -> str:
    subscription = subscription_at(customer=customer, at=now)
    return subscription.plan.currency if subscription else "USD"


# --- usage over time ------------------------------------------------------------------------------

HOURS_SHOWN = 72


def usage_series(*, customer: Customer, now: datetime) -> list[dict[str, Any]]:
    """Per meter with usage this period: the last 72 hours hour by hour, and the period day by day
    (every bucket, zero where nothing happened; days still ahead are left out)."""
    start, end = period_bounds(now)
    hour_end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    hour_start = hour_end - timedelta(hours=HOURS_SHOWN)
    hourly = usage_aggregate(customer=customer, start=hour_start, end=hour_end, granularity="hour")
    daily = usage_aggregate(customer=customer, start=start, end=end, granularity="day")
    meters = {m.key: m for m in Meter.objects.filter(key__in={r["meter"] for r in daily} | {r["meter"] for r in hourly})}
    out = []
    for key in sorted(meters):
        by_hour = {r["start"]: r["quantity"] for r in hourly if r["meter"] == key}
        by_day = {r["start"]: r["quantity"] for r in daily if r["meter"] == key}
        hours = [hour_start + timedelta(hours=i) for i in range(HOURS_SHOWN)]
        days = []
        day = start
        while day < end and day <= now:
            days.append(day)
            day += timedelta(days=1)
        out.append({"meter": meters[key],
                    "hourly": [(h, by_hour.get(h, Decimal(0))) for h in hours],
                    "daily": [(d, by_day.get(d, Decimal(0))) for d in days]})
    return out


# --- breakdowns -----------------------------------------------------------------------------------

@dataclass
class Slice:
    value: str | None
    cost: Decimal = Decimal(0)
    quantities: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))


def breakdown(*, customer: Customer, now: datetime, by: str, costs: list[UnitCost]) -> list[Slice]:
    """The period's usage and attributed cost (costs.py) per value of ``by`` (``project`` or a
    dimension), most expensive first."""
    start, end = period_bounds(now)
    group_by = tuple(sorted(filter_keys(costs) | {by}))
    slices: dict[str | None, Slice] = {}
    for row in usage_aggregate(customer=customer, start=start, end=end, granularity="month", group_by=group_by):
        value = row["group"].get(by)
        piece = slices.setdefault(value, Slice(value))
        piece.quantities[row["meter"]] += row["quantity"]
        piece.cost += cost_of(costs, row["meter"], row["group"], row["quantity"])
    for piece in slices.values():
        piece.quantities = dict(piece.quantities)  # templates look ".items" up as a key first
    return sorted(slices.values(), key=lambda s: (-s.cost, str(s.value)))


@dataclass
class Run:
    run_id: str
    cost: Decimal = Decimal(0)
    events: int = 0
    steps: set[Any] = field(default_factory=set)
    first: datetime | None = None
    last: datetime | None = None
    projects: set[str] = field(default_factory=set)
    agents: set[str] = field(default_factory=set)
    quantities: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    state: str = "open"  # its circuit breaker's: open, tripped or killed (billing.guardrails.runs)

    def add(self, meter: str, quantity: Decimal, at: datetime, cost: Decimal, step: Any, project: str | None,
            agent: str | None) -> None:
        self.cost += cost
        self.events += 1
        self.quantities[meter] += quantity
        self.first = at if self.first is None else min(self.first, at)
        self.last = at if self.last is None else max(self.last, at)
        if step is not None:
            self.steps.add(step)
        if project:
            self.projects.add(project)
        if agent:
            self.agents.add(agent)


def _run_events(customer: Customer, now: datetime) -> Any:
    start, end = period_bounds(now)
    return (UsageEvent.objects.filter(customer=customer, billable=True, usage_at__gte=start, usage_at__lt=end)
            .exclude(run_id="").order_by())


def runs_by_cost(*, customer: Customer, now: datetime, costs: list[UnitCost], limit: int = 20) -> list[Run]:
    """The period's agent runs (``trace.run_id``), most expensive first, each with its breaker's state."""
    runs: dict[str, Run] = {}
    rows = _run_events(customer, now).values_list("run_id", "meter__key", "dimensions", "quantity", "usage_at",
                                                   "trace", "project__key")
    for run_id, meter, dims, quantity, at, trace, project in rows.iterator(chunk_size=5000):
        dims = dims or {}
        run = runs.setdefault(run_id, Run(run_id))
        trace = trace or {}
        run.add(meter, quantity, at, cost_of(costs, meter, dims, quantity),
                trace.get("step"), project, trace.get("agent"))
    top = sorted(runs.values(), key=lambda r: (-r.cost, r.run_id))[:limit]
    states = run_states(customer=customer, run_ids=[r.run_id for r in top])
    for run in top:
        run.quantities = dict(run.quantities)  # templates look ".items" up as a key first
        run.state = states.get(run.run_id, run.state)
    return top


def run_steps(*, customer: Customer, now: datetime, run_id: str, costs: list[UnitCost]) -> list[dict[str, Any]]:
    """One run's events in step order, each with its attributed cost."""
    events = _run_events(customer, now).filter(run_id=run_id).select_related("meter", "project")
    steps = []
    for event in events:
        trace = event.trace or {}
        dims = event.dimensions or {}
        project = event.project.key if event.project else None
        steps.append({"event_id": event.event_id, "step": trace.get("step"), "agent": trace.get("agent"),
                      "parent_id": trace.get("parent_id"), "meter": event.meter.key, "unit": event.meter.unit,
                      "dimensions": dims, "project": project, "quantity": event.quantity, "timestamp": event.timestamp,
                      "cost": cost_of(costs, event.meter.key, dims, event.quantity)})
    steps.sort(key=lambda s: (s["step"] if isinstance(s["step"], int) else math.inf, s["timestamp"], s["event_id"]))
    return steps


# --- invoices and users ---------------------------------------------------------------------------

def invoice_list(*, customer: Customer) -> list[dict[str, Any]]:
    """Each invoice with its total; ``pay_url``: where to pay it (Stripe's or Paystack's page);
    ``billed_by_stripe``: a finalized invoice of a plan Stripe bills from its meters, which the customer
    pays through Stripe's own invoice (shown as such, not as unpaid)."""
    invoices = list(Invoice.objects.filter(customer=customer).order_by("-period_start", "-id"))
    by_stripe = plans_billed_by_stripe(plan_ids=[inv.plan_id for inv in invoices])
    links = payment_links(invoices=invoices)
    return [{"invoice": inv, "total": from_minor(inv.total_minor, inv.currency), "pay_url": links.get(inv.pk, ""),
             "billed_by_stripe": inv.status == Invoice.Status.FINALIZED and inv.plan_id in by_stripe}
            for inv in invoices]


def dashboard_users(*, customer: Customer) -> list[CustomerUser]:
    return list(CustomerUser.objects.filter(customer=customer).select_related("user").order_by("user__username"))


# --- soft-limit alerts and thresholds (billing/guardrails) ---------------------------------------------

ALERT_EMAIL_STATUS: dict[str, str] = {
    Alert.State.PENDING: "email queued",
    Alert.State.SENDING: "email being sent",
    Alert.State.SENT: "emailed",
    Alert.State.UNKNOWN: "email may not have arrived (not retried)",
    Alert.State.NO_RECIPIENTS: "not emailed: no address on file (set the invoice contact in Settings)",
}
THRESHOLD_SOURCES = {"default": "Default", "rate_card": "Plan's soft limit", "plan": "Plan", "customer": "Yours"}


def _target_names(targets: Iterable[str]) -> dict[str, str]:
    """``meter:llm_tokens`` -> the meter's name ("LLM tokens"), ``spend_cap`` -> "Spend cap"."""
    targets = set(targets)
    keys = {t.removeprefix(AlertThreshold.METER_PREFIX) for t in targets if t.startswith(AlertThreshold.METER_PREFIX)}
    names = dict(Meter.objects.filter(key__in=keys).values_list("key", "name"))
    return {t: "Spend cap" if t == AlertThreshold.SPEND_CAP
            else names.get(t.removeprefix(AlertThreshold.METER_PREFIX), t) for t in targets}


@dataclass(frozen=True)
class AlertShown:
    """One recorded alert of the open period, with its target and email status in words."""

    alert: Alert
    what: str

    @property
    def is_money(self) -> bool:  # the spend cap's figures are amounts in ``alert.unit`` (a currency)
        return self.alert.target == AlertThreshold.SPEND_CAP

    @property
    def email_status(self) -> str:
        return ALERT_EMAIL_STATUS.get(self.alert.state, self.alert.state)


def alerts_shown(*, customer: Customer, now: datetime) -> list[AlertShown]:
    """The alerts recorded in the open limits period (the calendar month, UTC), oldest first."""
    start, _ = period_bounds(now)
    rows = list(alerts_list(customer=customer, period_start=start))
    names = _target_names(a.target for a in rows)
    return [AlertShown(a, names[a.target]) for a in rows]


@dataclass(frozen=True)
class ThresholdShown:
    threshold: EffectiveThreshold
    what: str

    @property
    def source(self) -> str:
        return THRESHOLD_SOURCES.get(self.threshold.source, self.threshold.source)

    @property
    def own(self) -> bool:
        """Only the customer's own thresholds can be deleted from the dashboard."""
        return self.threshold.source == "customer" and self.threshold.id is not None

    @property
    def is_money(self) -> bool:
        return self.threshold.target == AlertThreshold.SPEND_CAP


@dataclass(frozen=True)
class AlertSettings:
    thresholds: list[ThresholdShown]
    targets: list[tuple[str, str]]  # (target, name): what the customer's plan limits now, for the add form


def alert_settings(*, customer: Customer, now: datetime) -> AlertSettings:
    """The effective thresholds (the plan's or the default, and the customer's own) with where the customer
    stands against each, and the targets a new threshold can watch: the plan's hard-limited meters and its
    spend cap, if it has one."""
    figures = limit_figures(customer=customer, now=now)
    effective = alert_thresholds_effective(customer=customer, now=now, figures=figures)
    names = _target_names([*(t.target for t in effective), *(f.target for f in figures)])
    return AlertSettings([ThresholdShown(t, names[t.target]) for t in effective],
                         [(f.target, names[f.target]) for f in figures])


# --- guardrails: runs, pauses, budgets (billing/guardrails) ----------------------------------------

STOPPED = (GuardedRun.State.TRIPPED, GuardedRun.State.KILLED)


def run_guard(*, customer: Customer, run_id: str) -> dict[str, Any] | None:
    """The run's circuit-breaker figures as the run endpoint shows them (state, steps, spend, breaker,
    started_at), or None for a run the guardrails never counted nor stopped (no run limits on its terms).
    ``counted`` is False for a run stopped by hand whose steps were never counted: its zeros mean nothing."""
    try:
        detail = run_detail(customer=customer, run_id=run_id)
    except DomainError as exc:
        if exc.code != CommonCode.NOT_FOUND:
            raise
        return None
    return {**detail, "counted": detail["started_at"] is not None or detail["steps"] > 0,
            "stopped": detail["state"] in STOPPED}


def run_states(*, customer: Customer, run_ids: Iterable[str]) -> dict[str, str]:
    """The state of each of ``run_ids`` that the guardrails hold a row for; every other run is open."""
    rows = GuardedRun.objects.filter(customer=customer, run_id__in=list(run_ids)).values_list("run_id", "state")
    return dict(rows)


def runs_stopped(*, customer: Customer) -> list[GuardedRun]:
    """The customer's tripped and killed runs, the latest stopped first: each refuses its events until released."""
    return list(GuardedRun.objects.filter(customer=customer, state__in=STOPPED).order_by("-changed_at", "run_id"))


def pauses_active(*, customer: Customer) -> list[dict[str, Any]]:
    """The customer's active pauses, oldest first, as the pauses endpoint lists them."""
    rows = Pause.objects.select_related("customer", "project").filter(customer=customer, lifted_at__isnull=True)
    return [pause_as_dict(p) for p in rows.order_by("created_at", "pk")]


def budgets_shown(*, customer: Customer, now: datetime) -> list[dict[str, Any]]:
    """Each budget with this period's used and remaining (the figures the limits enforce)."""
    return budget_figures(customer=customer, now=now)


def budget_scope_choices(*, customer: Customer) -> dict[str, list[tuple[str, str]]]:
    """What a new budget's scope may name: the customer's projects and its own active API keys."""
    projects = [(p.key, p.name or p.key) for p in Project.objects.filter(customer=customer).order_by("key")]
    keys = [(k.prefix, f"{k.name} (tg_{k.prefix}_…)")
            for k in ApiKey.objects.filter(customer=customer, revoked_at__isnull=True).order_by("name", "prefix")]
    return {"projects": projects, "api_keys": keys}


def gateway_keys(*, customer: Customer) -> list[ApiKey]:
    """The customer's gateway keys that still work, newest first (prefixes only: a secret is shown once)."""
    return list(ApiKey.objects.filter(customer=customer, scope=ApiKey.Scope.GATEWAY, revoked_at__isnull=True)
                .order_by("-created_at"))
