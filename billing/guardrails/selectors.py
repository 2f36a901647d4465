from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet

from billing.catalog.models import Meter
from billing.catalog.money import MINOR_UNITS
from billing.catalog.ratecard import RateCard
from billing.catalog.selectors import subscription_at, version_in_effect
from billing.common.calendar import day_key, period_key
from billing.common.fields import decimal_to_text
from billing.customers.models import Customer
from billing.guardrails import accounts as acc
from billing.guardrails import guards
from billing.guardrails.models import Alert, AlertThreshold, Budget, CreditGrant
from ledger.backends import get_ledger
from ledger.codes import TransferCode


def _q(units: int) -> str:
    return decimal_to_text(acc.units_to_qty(units))


def _m(units: int) -> str:
    return decimal_to_text(acc.units_to_money(units))


def customer_balance(*, customer: Customer, now: datetime) -> dict[str, Any]:
    """Credits per currency (posted, pending, available) and, for the open period, each limited meter's
    limit, used, reserved, remaining and soft limit, and the spend cap."""
    ledger = get_ledger()
    ids = acc.Ids(customer.pk)
    currencies = set(CreditGrant.objects.filter(customer=customer).values_list("currency", flat=True))
    subscription = subscription_at(customer=customer, at=now)
    version = version_in_effect(plan=subscription.plan, at=now) if subscription else None
    if subscription:
        currencies.add(subscription.plan.currency)
    period = period_key(now)
    card = card_in_effect(customer_pk=customer.pk, card=version.rate_card) if version else RateCard()
    meters = {m.key: m for m in Meter.objects.filter(key__in=[limit.meter for limit in card.limits])}
    cap = card.spend_cap if subscription else None
    wanted = [ids.wallet(c) for c in currencies if c in MINOR_UNITS]
    wanted += [ids.quota(m.pk, period) for m in meters.values()]
    if subscription and cap is not None:
        wanted.append(ids.spend(subscription.plan.currency, period))
    found = ledger.lookup_accounts(wanted)
    credits = []
    for currency in sorted(currencies):
        wallet = found.get(ids.wallet(currency))
        posted = wallet.balance if wallet else 0
        pending = wallet.debits_pending if wallet else 0
        credits.append({"currency": currency, "posted": _m(posted), "pending": _m(pending), "available": _m(posted - pending)})
    quotas = []
    for limit in card.limits:
        meter = meters.get(limit.meter)
        if meter is None or limit.hard is None:
            continue
        hard = limit.hard
        account = found.get(ids.quota(meter.pk, period))
        # used = the allocation less what the account still holds (refunds of refused settlements credit it
        # back); the allocation follows the terms, but not below what was used when they were lowered
        allocated = acc.allocated_net(account.id, TransferCode.QUOTA_ALLOCATION)[0] if account else 0
        used = max(allocated - account.balance, 0) if account else 0
        reserved = account.debits_pending if account else 0
        soft_abs = limit.soft_limit
        remaining = max(hard - acc.units_to_qty(used + reserved), Decimal(0))
        quotas.append({"meter": meter.key, "unit": meter.unit, "limit": decimal_to_text(hard), "used": _q(used),
                       "reserved": _q(reserved), "remaining": decimal_to_text(remaining),
                       "soft_limit": decimal_to_text(soft_abs) if soft_abs is not None else None})
    spend = None
    if subscription and cap is not None:
        account = found.get(ids.spend(subscription.plan.currency, period))
        spent = _net_spent(account, customer.pk, subscription.plan.currency, period, cap) if account else 0
        reserved = account.debits_pending if account else 0
        left = max(cap - acc.units_to_money(spent + reserved), Decimal(0))
        spend = {"currency": subscription.plan.currency, "cap": decimal_to_text(cap), "spent": _m(spent),
                 "reserved": _m(reserved), "remaining": decimal_to_text(left)}
    return {"customer": customer.external_id, "period": period, "credits": credits, "quotas": quotas, "spend_cap": spend}


def _net_spent(account: Any, customer_pk: int, currency: str, period: int, cap: Decimal) -> int:
    """The period's spend on its spend-cap account, net of credit-backs (events whose marginal cost is
    negative credit it back): what its allocation (which follows the cap) has less what it holds."""
    allocated = acc.allocated_net(account.id, TransferCode.SPEND_CAP_ALLOCATION)[0]
    return max(allocated - account.balance, 0)


def card_in_effect(*, customer_pk: int, card: RateCard) -> RateCard:
    """The plan's card with the customer's override applied (the terms its limits are enforced with)."""
    override = guards.current_state(customer_pk).override
    return override.apply(card) if override is not None else card


# --- Budgets ------------------------------------------------------------------------------------------

DEFAULT_BUDGET_SOFT_PERCENT = Decimal(80)
BUDGET_TARGET_PREFIX = "budget:"  # the alert target of a budget's soft threshold


def budget_figures(*, customer: Customer, now: datetime) -> list[dict[str, Any]]:
    """Each budget with what its current period (this month, or today) has used and has left, from its
    ledger account (the figures the limits enforce)."""
    out = []
    for budget, currency, used in _budgets_used(customer, now):
        row = budget_as_dict(budget)
        row.update(currency=currency, period_key=_period_of(budget, now), used=decimal_to_text(used),
                   remaining=decimal_to_text(max(budget.amount - used, Decimal(0))))
        out.append(row)
    return out


def _budgets_used(customer: Customer, now: datetime) -> list[tuple[Budget, str | None, Decimal]]:
    """Each budget, the currency it counts in (the plan's now; None without a plan) and what its current
    period has used."""
    budgets = list(Budget.objects.filter(customer=customer).order_by("budget_id"))
    subscription = subscription_at(customer=customer, at=now)
    currency = subscription.plan.currency if subscription is not None else None
    ids = {b.pk: acc.budget_account(customer.pk, b.pk, currency, _period_of(b, now)).id
           for b in budgets} if currency else {}
    found = get_ledger().lookup_accounts(list(ids.values())) if ids else {}
    out = []
    for budget in budgets:
        account = found.get(ids.get(budget.pk, 0))
        used = Decimal(0)
        if account is not None:
            allocated = acc.allocated_net(account.id, TransferCode.BUDGET_ALLOCATION)[0]
            used = acc.units_to_money(max(allocated - account.balance, 0))
        out.append((budget, currency, used))
    return out


def budget_as_dict(budget: Budget) -> dict[str, Any]:
    scope = budget.scope or {}
    shown = {k: scope[k] for k in ("project", "dimension", "api_key") if scope.get(k)}
    return {"budget_id": budget.budget_id, "scope": shown, "amount": decimal_to_text(budget.amount),
            "period": budget.period, "action": budget.action,
            "soft": f"{decimal_to_text(budget_soft_percent(budget))}%", "created_at": budget.created_at}


def budget_soft_percent(budget: Budget) -> Decimal:
    return budget.soft_percent if budget.soft_percent is not None else DEFAULT_BUDGET_SOFT_PERCENT


def budget_alert_target(budget: Budget, now: datetime) -> str:
    """The alert target of the budget's period: a monthly budget alerts once a month (the alert's period
    is the month), a daily one once a day (the day is part of its target)."""
    if budget.period == Budget.Period.DAY:
        return f"{BUDGET_TARGET_PREFIX}{budget.budget_id}@{now:%Y-%m-%d}"
    return f"{BUDGET_TARGET_PREFIX}{budget.budget_id}"


def _period_of(budget: Budget, now: datetime) -> int:
    return day_key(now) if budget.period == Budget.Period.DAY else period_key(now)


# --- Soft-limit alerts --------------------------------------------------------------------------------

DEFAULT_ALERT_PERCENT = Decimal(80)


@dataclass(frozen=True)
class LimitFigure:
    """Where a customer stands against one hard limit or the spend cap in the open period."""

    target: str  # "meter:<key>" or "spend_cap"
    limit: Decimal
    used: Decimal  # posted usage (or spend); reservations not settled yet do not count
    unit: str  # the meter's unit, or the plan's currency
    soft: Decimal | None = None  # the rate card's soft limit of this meter (absolute), if it names one

    @property
    def used_percent(self) -> Decimal:
        return (self.used * 100 / self.limit) if self.limit > 0 else Decimal(0)


@dataclass(frozen=True)
class EffectiveThreshold:
    target: str
    percent: Decimal
    source: str  # "default" (80%), "rate_card" (the plan's soft limit), "plan" (AlertThreshold) or "customer"
    id: int | None = None  # the AlertThreshold row; None for the built-in default
    figure: LimitFigure | None = None  # None: the plan has no such limit, so the threshold is inactive

    @property
    def threshold(self) -> Decimal | None:
        """The absolute usage (or spend) at which it fires."""
        return self.figure.limit * self.percent / 100 if self.figure else None

    @property
    def crossed(self) -> bool:
        return self.figure is not None and self.figure.limit > 0 and self.figure.used >= self.threshold  # type: ignore[operator]

    def as_dict(self) -> dict[str, Any]:
        f = self.figure
        return {"id": self.id, "target": self.target, "percent": decimal_to_text(self.percent), "source": self.source,
                "active": f is not None, "limit": decimal_to_text(f.limit) if f else None,
                "threshold": decimal_to_text(self.threshold) if f else None,  # type: ignore[arg-type]
                "used": decimal_to_text(f.used) if f else None, "unit": f.unit if f else None, "crossed": self.crossed}


def limit_figures(*, customer: Customer, now: datetime) -> list[LimitFigure]:
    """Each hard limit and the spend cap of the customer's plan, with the open period's usage (from the
    ledger, the same figures as ``customer_balance``)."""
    balance = customer_balance(customer=customer, now=now)
    out = [LimitFigure(f"{AlertThreshold.METER_PREFIX}{q['meter']}", Decimal(q["limit"]), Decimal(q["used"]), q["unit"],
                       Decimal(q["soft_limit"]) if q["soft_limit"] is not None else None)
           for q in balance["quotas"]]
    spend = balance["spend_cap"]
    if spend is not None:
        out.append(LimitFigure(AlertThreshold.SPEND_CAP, Decimal(spend["cap"]), Decimal(spend["spent"]), spend["currency"]))
    for budget, currency, used in _budgets_used(customer, now):
        if currency is None:
            continue
        target, amount = budget_alert_target(budget, now), budget.amount
        out.append(LimitFigure(target, amount, used, currency, amount * budget_soft_percent(budget) / 100))
        if budget.action == Budget.Action.ALERT:  # an alert-only budget also says when it is exceeded
            out.append(LimitFigure(target, amount, used, currency, amount))
    return out


def alert_thresholds_effective(*, customer: Customer, now: datetime | None = None,
                               figures: list[LimitFigure] | None = None) -> list[EffectiveThreshold]:
    """The thresholds that apply to the customer now, by target then percent. For each hard limit and the
    spend cap of its plan: the plan's thresholds for that target (AlertThreshold rows of the plan); without
    any, the rate card's soft limit of that meter (as a percent of the hard limit, to 2 decimals); without
    one, 80%. Plus the customer's own. The customer's own thresholds on a target its plan does not limit are
    listed inactive (``figure`` None), so that they can be seen and deleted."""
    from django.utils import timezone

    if figures is None:
        figures = limit_figures(customer=customer, now=now or timezone.now())
    by_target = {f.target: f for f in figures}
    subscription = subscription_at(customer=customer, at=now or timezone.now())
    plan_rows = list(AlertThreshold.objects.filter(plan_id=subscription.plan_id)) if subscription else []
    own_rows = list(AlertThreshold.objects.filter(customer=customer))
    out: dict[tuple[str, Decimal], EffectiveThreshold] = {}
    for figure in figures:
        rows = [r for r in plan_rows if r.target == figure.target]
        if not rows:
            percent, source = DEFAULT_ALERT_PERCENT, "default"
            if figure.soft is not None and 0 < figure.soft <= figure.limit:
                percent, source = Decimal(decimal_to_text(
                    (figure.soft * 100 / figure.limit).quantize(Decimal("0.01")))), "rate_card"
            out[(figure.target, percent)] = EffectiveThreshold(figure.target, percent, source, figure=figure)
        for row in rows:
            out[(row.target, row.percent)] = EffectiveThreshold(row.target, row.percent, "plan", row.pk, figure)
    for row in own_rows:  # a customer's own wins over an equal plan or default one: it is the one they can delete
        out[(row.target, row.percent)] = EffectiveThreshold(row.target, row.percent, "customer", row.pk,
                                                            by_target.get(row.target))
    return sorted(out.values(), key=lambda t: (t.target, t.percent))


def alerts_list(*, customer: Customer, period_start: datetime) -> QuerySet[Alert]:
    """The customer's alerts of the period starting at ``period_start`` (``calendar.period_bounds``)."""
    return Alert.objects.filter(customer=customer, period_start=period_start).order_by("crossed_at", "target", "percent")
