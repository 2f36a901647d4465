"""What every event of one (customer, plan version, meter, period) shares: limits, account ids and charges
(``LimitTerms``), worked out once per batch, and the accounts and allocations a batch needs (``prepare``)."""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing.catalog.models import Meter
from billing.catalog.ratecard import RateCard, RunLimits
from billing.common import process_caches
from billing.common.calendar import day_key, period_key
from billing.guardrails import accounts as acc
from billing.guardrails.guards import BudgetTerms
from billing.guardrails.limits.charges import Charge, counter_keys, fast_terms, matching_charges
from billing.guardrails.limits.events import (
    ADDITIVE,
    BUDGET,
    COUNTER,
    EACH,
    LIMIT_KIND,
    LINEAR,
    OPERATOR_OF,
    QUOTA,
    RUN_SPEND,
    RUN_STEPS,
    SPEND,
    TOTAL,
    UNIQUE_VALUES,
    EventUsage,
    Guard,
)
from billing.guardrails.limits.subscribed import Sub, SubscribedPlans, Version
from ledger.backends import get_ledger
from ledger.codes import RUN_LEDGER, AccountCode, currency_ledger, unit_ledger
from ledger.ids import deriver
from ledger.types import Account, Transfer


@dataclass
class LimitTerms:
    """What every event of one (customer, subscription, rate-card version, meter, period) of a batch shares:
    limits, account ids, and charges by dimensions. Worked out once per batch, not once per event (the
    ids are blake2b hashes, and per event they cost more than the pricing)."""

    customer_pk: int
    meter: Meter
    period: int
    card: RateCard
    currency: str
    hard: Decimal | None
    cap: Decimal | None
    prepaid: bool
    priced: bool
    kind: str = TOTAL  # how the hard limit applies (events.LIMIT_KIND)
    quota_id: int = 0
    spend_id: int = 0
    wallet_id: int = 0
    consumed_id: int = 0  # the period's credits-consumed account (the credits legs' other side), when prepaid
    unit_ledger: int = 0
    money_ledger: int = 0
    charges: dict[tuple[tuple[str, str], ...], list[Charge]] = field(default_factory=dict)
    unique_id: Callable[..., int] = field(init=False)  # a unique_count value's account id (accounts.Ids.unique)

    def __post_init__(self) -> None:
        self.unique_id = deriver("unique-value", self.customer_pk, self.meter.pk, self.period)

    def operator_ids(self, counted: bool) -> set[int]:
        """The accounts on the other side of the terms' transfers (the operator accounts, and the period's
        credits-consumed account), credited by usage and debited by credit-backs (``counted``: some charge
        has a usage counter)."""
        legs = [(COUNTER, self.unit_ledger)] if counted else []
        if self.hard is not None and self.kind != EACH:
            legs.append((QUOTA, self.unit_ledger))
        if self.cap is not None:
            legs.append((SPEND, self.money_ledger))
        operators = {acc.operator_account(OPERATOR_OF[code], ledger).id for code, ledger in legs}
        if self.prepaid:
            operators.add(self.consumed_id)
        return operators

    def unique_value(self, event: EventUsage) -> str | None:
        """The value a unique_count limit counts the event under (None: the event counts none)."""
        if self.kind != UNIQUE_VALUES or self.hard is None:
            return None
        return event.dimensions.get(self.meter.unique_by)

    def matching(self, event: EventUsage) -> list[Charge]:
        """The charges the event's dimensions match, worked out once per set of dimensions (the same list
        object for every event with those dimensions)."""
        key = tuple(event.dimensions.items())  # the same dimensions in another order: a second entry, as right
        found = self.charges.get(key)
        if found is None:
            found = []
            matching = matching_charges(self.card, event)
            for index, ((charge, group), counter_key) in enumerate(zip(matching, counter_keys(matching), strict=True)):
                counter = None
                if charge.model not in LINEAR:
                    counter = acc.counter_account(self.customer_pk, self.meter.pk, counter_key, self.period)
                percent = charge.markup.percent_for(group) if charge.markup else None
                spec = charge.spec
                found.append(Charge(index, charge, group, spec, counter.id if counter else None, percent,
                                     counter=counter, fast=None if percent is not None else fast_terms(spec)))
            if len(self.charges) >= _CHARGES_MAX:  # kept across batches (_SHARED): bounded, whatever the dimensions
                self.charges.clear()
            self.charges[key] = found
        return found


@dataclass
class Prepared:
    """A batch's limited events with their shared terms and matching charges, accounts ensured (or, when
    the booking is to create those missing, listed)."""

    plans: list[tuple[EventUsage, LimitTerms, list[Charge]]]  # empty when no event is limited
    counters: list[int]
    wallet_ids: list[int]  # the credit wallets the events' customers would have in their plans' currencies
    wallets: set[int]  # those taken to exist
    values: list[int]  # the unique_count values' accounts the events would count (LimitTerms.unique_id)
    # the distinct terms of the plans, each with whether one of its events' charges has a usage counter
    # (a batch's events mostly share one: the accounts are worked out per terms, not per event)
    terms: dict[int, tuple[LimitTerms, bool]] = field(default_factory=dict)
    guarded: set[int] = field(default_factory=set)  # the run and budget accounts the events take from, and their operators
    # what the events need in the ledger, when ``prepare`` was told not to create it (``create=False``)
    accounts: list[Account] = field(default_factory=list)
    allocations: list[Transfer] = field(default_factory=list)

    def bounded(self) -> set[int]:
        """The balance-bounded accounts the events debit: quotas, spend caps, credit wallets, runs, budgets."""
        combinations = {id(event.guards): event.guards for event, _, _ in self.plans if event.guards}  # shared tuples
        return {i for shared, _ in self.terms.values()
                for i in (shared.quota_id, shared.spend_id, shared.wallet_id if shared.prepaid else 0) if i} | {
                    g.account_id for guards in combinations.values() for g in guards if g.code}

    def locks(self) -> set[int]:
        """The accounts a batch debit reads (and, deciding under locks, holds): bounded ones, usage counters,
        and the operator accounts its transfers credit. All of them: the careful pass locks them in one
        ascending order before it books, so that it never waits for an operator account while holding the
        customer's, which a concurrent booking (ascending order too) may hold the other way round."""
        operators = {i for shared, counted in self.terms.values() for i in shared.operator_ids(counted)}
        return self.bounded() | set(self.counters) | operators | set(self.values) | self.guarded


def _wallets_in_ledger(ids: list[int]) -> set[int]:
    return set(get_ledger().lookup_accounts(ids))


def prepare(events: list[EventUsage], subscribed: SubscribedPlans | None = None,
            wallets: Callable[[list[int]], set[int]] = _wallets_in_ledger, *, create: bool = True) -> Prepared | None:
    """Work out, once per batch, which events a limit applies to and with which terms (from the subscribed
    plans, read unless the caller has them); create the accounts and period allocations they need, or with
    ``create`` off list them (``Prepared.accounts``, ``allocations``: the caller's booking creates those
    missing). ``wallets`` tells which credit wallets exist (the ledger by default). None when no event has
    terms."""
    subscribed = subscribed or SubscribedPlans(e.customer_pk for e in events)
    # Pass 1: each event's (customer, subscription, rate-card version, meter, period), found once per
    # stretch of time in which it cannot change, not once per event.
    spans: dict[tuple[int, int], tuple[datetime, datetime, tuple[int, int, int, int, int]]] = {}
    firsts: dict[tuple[int, int, int, int, int], tuple[EventUsage, Sub, Version, int]] = {}
    keyed: list[tuple[EventUsage, tuple[int, int, int, int, int]]] = []
    for event in events:
        at, where = event.usage_at, (event.customer_pk, id(event.meter))
        span = spans.get(where)
        if span is None or not span[0] <= at < span[1]:
            found = subscribed.span(event.customer_pk, at)
            if found is None:
                continue
            sub, version, lo, hi = found
            period = period_key(at)
            span = spans[where] = (lo, hi, (event.customer_pk, sub.pk, version.pk, event.meter.pk, period))
            firsts.setdefault(span[2], (event, sub, version, period))
        keyed.append((event, span[2]))
    if not keyed:
        return None
    currencies = {(e.customer_pk, sub.currency) for e, sub, _, _ in firsts.values()}
    wallet_ids = {(c, cur): acc.Ids(c).wallet(cur) for c, cur in currencies}
    existing = wallets(list(wallet_ids.values()))

    accounts: list[Account] = []
    allocations: list[Transfer] = []
    budgeted = subscribed.budgets
    by_key = {key: _shared_terms(event, sub, version, period, wallet_ids, existing, accounts, allocations, budgeted)
              for key, (event, sub, version, period) in firsts.items()}
    plans: list[tuple[EventUsage, LimitTerms, list[Charge]]] = []
    lists: dict[int, list[Charge]] = {}  # the distinct charge lists of the batch, for their counters
    terms_of: dict[int, tuple[LimitTerms, bool]] = {}
    for event, key in keyed:
        shared = by_key[key]
        if shared is not None:
            charges = shared.matching(event) if shared.priced else []
            if charges and id(charges) not in lists:
                lists[id(charges)] = charges
                if any(c.counter_id for c in charges):
                    terms_of[id(shared)] = (shared, True)
            if id(shared) not in terms_of:
                terms_of[id(shared)] = (shared, False)
            plans.append((event, shared, charges))
    counters_needed = {c.counter.id: c.counter for charges in lists.values() for c in charges if c.counter}
    values: dict[int, None] = {}
    # the passes over every event for guards and distinct values only when some terms of the batch have them
    distinct = [shared for shared, _ in terms_of.values()]
    guards = any(_may_guard(shared, subscribed) for shared in distinct)
    guarded = _guards(plans, subscribed, accounts, allocations) if plans and guards else set()
    if plans:
        for counter in counters_needed.values():
            accounts += [counter, acc.operator_account(AccountCode.OPERATOR_COUNTER, counter.ledger)]
        if any(shared.kind == UNIQUE_VALUES and shared.hard is not None for shared in distinct):
            for event, shared, _charges in plans:
                value = shared.unique_value(event)
                if value is not None and shared.unique_id(value) not in values:
                    values[shared.unique_id(value)] = None
                    accounts.append(acc.unique_account(shared.customer_pk, shared.meter.pk, shared.period, value))
                    allocations.append(acc.unique_allocation(shared.customer_pk, shared.meter.pk, shared.period, value))
        if create:
            acc.ensure(accounts, allocations)
    return Prepared(plans, list(counters_needed), list(wallet_ids.values()), existing, list(values), terms_of,
                    guarded, [] if create else accounts, [] if create else allocations)


def _may_guard(shared: LimitTerms, subscribed: SubscribedPlans) -> bool:
    """Whether ``_guards`` may find a guard for an event of these terms: run limits, or (priced) a budget of
    the customer or anomaly detection."""
    return shared.card.run_limits is not None or (shared.priced and (
        shared.card.anomaly is not None or bool(subscribed.budgets.get(shared.customer_pk))))


def _guards(plans: list[tuple[EventUsage, LimitTerms, list[Charge]]], subscribed: SubscribedPlans,
            accounts: list[Account], allocations: list[Transfer]) -> set[int]:
    """Set each event's ``guards``: its run's steps and spend (when the terms have run limits), and the
    budgets covering it; append their accounts and allocations. Worked out once per (customer, run) and
    per (customer, what a budget can look at), not per event. Returns the accounts, with their operators."""
    by_run: dict[tuple[int, str, str], tuple[Guard, ...]] = {}
    by_scope: dict[tuple[Any, ...], tuple[Guard, ...]] = {}
    by_watch: dict[tuple[int, str, str], tuple[Guard, ...]] = {}
    # the events' guards, one tuple per distinct (run, budgets, watch) combination: shared by the events
    # that have it (the batch's sums group events by it: limits.batch)
    combined: dict[tuple[int, int, int], tuple[Guard, ...]] = {}
    views: dict[int, tuple[tuple[str, ...], bool]] = {}
    touched: set[int] = set()
    none: tuple[Guard, ...] = ()
    for event, shared, _charges in plans:
        run = scoped = watch = none
        limits = shared.card.run_limits
        if limits is not None and event.run_id:
            key = (event.customer_pk, event.run_id, shared.currency)
            run = by_run.get(key)  # type: ignore[assignment]
            if run is None:
                run = by_run[key] = _run_guards(shared, event.run_id, limits, accounts, allocations)
        budgets = subscribed.budgets.get(event.customer_pk)
        if budgets and shared.priced:
            # what the customer's budgets look at, and nothing more: a key per distinct answer
            view = views.get(event.customer_pk)
            if view is None:
                view = views[event.customer_pk] = _budget_view(budgets)
            keys, daily = view
            day = day_key(event.usage_at) if daily else 0
            dimensions = event.dimensions
            scope = (event.customer_pk, event.project_pk, event.api_key_pk,
                     tuple([dimensions.get(k) for k in keys]) if keys else (), shared.currency, shared.period, day)
            scoped = by_scope.get(scope)  # type: ignore[assignment]
            if scoped is None:
                scoped = by_scope[scope] = _budget_guards(shared, budgets, event, day, accounts, allocations)
        if shared.card.anomaly is not None and shared.priced:
            key = (event.customer_pk, "", shared.currency)
            watch = by_watch.get(key)  # type: ignore[assignment]
            if watch is None:
                watch = by_watch[key] = _watch_guard(shared, accounts, allocations)
        if run or scoped or watch:
            parts = (id(run), id(scoped), id(watch))
            guards = combined.get(parts)
            if guards is None:
                guards = combined[parts] = run + scoped + watch
                touched.update(g.account_id for g in guards)
            event.guards = guards
    if touched:
        touched |= {acc.operator_account(OPERATOR_OF[g.code], g.ledger).id
                    for found in (*by_run.values(), *by_scope.values(), *by_watch.values()) for g in found if g.code}
    return touched


def _run_guards(shared: LimitTerms, run_id: str, limits: RunLimits, accounts: list[Account],
                allocations: list[Transfer]) -> tuple[Guard, ...]:
    customer_pk = shared.customer_pk
    steps = acc.run_steps_account(customer_pk, run_id)
    accounts += [steps, acc.operator_account(AccountCode.OPERATOR_RUNS, RUN_LEDGER)]
    allocations.append(acc.run_allocation(steps, limits.max_steps or acc.UNLIMITED))
    guards = []
    if limits.max_duration_seconds:  # checked against when the run's steps account was made (its first event)
        guards.append(Guard("run_duration", steps.id, 0, RUN_LEDGER, 0, run_id,
                            seconds=limits.max_duration_seconds))
    guards.append(Guard("run_steps", steps.id, RUN_STEPS, RUN_LEDGER, 0, run_id, per_step=True,
                        checked=limits.max_steps is not None))
    if shared.priced:
        spend = acc.run_spend_account(customer_pk, shared.currency, run_id)
        accounts += [spend, acc.operator_account(AccountCode.OPERATOR_RUNS, shared.money_ledger)]
        allocations.append(acc.run_allocation(
            spend, acc.money_units_ceil(limits.max_spend) if limits.max_spend is not None else acc.UNLIMITED))
        guards.append(Guard("run_spend", spend.id, RUN_SPEND, shared.money_ledger, 0, run_id,
                            checked=limits.max_spend is not None))
    return tuple(guards)


def _budget_view(budgets: tuple[BudgetTerms, ...]) -> tuple[tuple[str, ...], bool]:
    """The dimension keys a customer's budgets match on, and whether one of them is daily."""
    return tuple(sorted({k for b in budgets for k, _ in b.dimension})), any(b.period == "day" for b in budgets)


def _watch_guard(shared: LimitTerms, accounts: list[Account], allocations: list[Transfer]) -> tuple[Guard, ...]:
    """Anomaly detection's counter: the customer's spend in one currency since its first priced event, a
    budget account that only counts (never refuses); the anomaly sampler reads it (guardrails.anomalies)."""
    account = acc.spend_watch_account(shared.customer_pk, shared.currency)
    accounts += [account, acc.operator_account(AccountCode.OPERATOR_BUDGETS, shared.money_ledger)]
    allocations.append(acc.budget_allocation(account, acc.UNLIMITED))
    return (Guard("budget", account.id, BUDGET, shared.money_ledger, 0, "", checked=False),)


def _budget_guards(shared: LimitTerms, budgets: tuple[BudgetTerms, ...], event: EventUsage, day: int,
                   accounts: list[Account], allocations: list[Transfer]) -> tuple[Guard, ...]:
    guards = []
    for budget in budgets:
        if not budget.covers(event.project_pk, event.dimensions, event.api_key_pk):
            continue
        period = day if budget.period == "day" else shared.period
        account = acc.budget_account(shared.customer_pk, budget.pk, shared.currency, period)
        accounts += [account, acc.operator_account(AccountCode.OPERATOR_BUDGETS, shared.money_ledger)]
        allocations.append(acc.budget_allocation(
            account, acc.money_units_ceil(budget.amount) if budget.blocking else acc.UNLIMITED))
        guards.append(Guard("budget", account.id, BUDGET, shared.money_ledger, period, budget.budget_id,
                            checked=budget.blocking))
    return tuple(guards)


# LimitTerms of recent batches, reused by later ones: they depend only on the key (a version's rate card is
# never edited; ids derive from stable keys) and keep their charges by dimensions, so a customer's next
# batch neither derives ids nor parses charges again. Bounded: emptied when full.
_SHARED: dict[tuple[Any, ...], tuple[LimitTerms | None, list[Account], list[Transfer]]] = process_caches.register(
    "billing.guardrails.limits.plans._SHARED", {})


_SHARED_MAX = 10_000


_CHARGES_MAX = 1_000  # sets of dimensions whose charges one LimitTerms keeps (a dimension may be an id)


def _shared_terms(event: EventUsage, sub: Sub, version: Version, period: int,
                  wallet_ids: dict[tuple[int, str], int], wallets: set[int], accounts: list[Account],
                  allocations: list[Transfer], budgeted_customers: Container[int]) -> LimitTerms | None:
    """``_terms_of``, from _SHARED when a batch has worked it out before in this process."""
    prepaid = wallet_ids[(event.customer_pk, sub.currency)] in wallets
    budgeted = event.customer_pk in budgeted_customers
    key = (event.customer_pk, event.meter.pk, period, version.key, sub.currency, prepaid, budgeted)
    found = _SHARED.get(key)
    if found is None:
        needs: list[Account] = []
        allocated: list[Transfer] = []
        found = (_terms_of(event, sub, version, period, wallet_ids, wallets, needs, allocated, budgeted), needs,
                 allocated)
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        _SHARED[key] = found
    accounts += found[1]
    allocations += found[2]
    return found[0]


def _terms_of(event: EventUsage, sub: Sub, version: Version, period: int,
              wallet_ids: dict[tuple[int, str], int], wallets: set[int], accounts: list[Account],
              allocations: list[Transfer], budgeted: bool) -> LimitTerms | None:
    """The shared terms of the event's (customer, plan version, meter, period), or None when nothing limits
    it; the accounts and period allocations it needs are appended (in first-seen order). Run limits,
    budgets (``budgeted``: the customer has some) and anomaly detection need the events' costs: with any of
    them the events are priced too."""
    card = version.card
    currency = sub.currency
    customer_pk, meter = event.customer_pk, event.meter
    hard = card.hard_limit(meter.key)
    cap = card.spend_cap
    wallet_id = wallet_ids[(customer_pk, currency)]
    prepaid = wallet_id in wallets
    guarded = budgeted or card.run_limits is not None or card.anomaly is not None
    if hard is None and cap is None and not prepaid and not guarded:
        return None
    priced = (cap is not None or prepaid or guarded) and meter.aggregation in ADDITIVE
    ids = acc.Ids(customer_pk)
    shared = LimitTerms(customer_pk, meter, period, card, currency, hard, cap, prepaid, priced,
                        kind=LIMIT_KIND[meter.aggregation], wallet_id=wallet_id, unit_ledger=unit_ledger(meter.pk),
                        money_ledger=currency_ledger(currency))
    if hard is not None and shared.kind != EACH:
        shared.quota_id = ids.quota(meter.pk, period)
        accounts += [acc.quota_account(customer_pk, meter.pk, period),
                     acc.operator_account(AccountCode.OPERATOR_QUOTA, shared.unit_ledger)]
        allocations.append(acc.quota_allocation(customer_pk, meter.pk, period, hard))
    if cap is not None:
        shared.spend_id = ids.spend(currency, period)
        accounts += [acc.spend_account(customer_pk, currency, period),
                     acc.operator_account(AccountCode.OPERATOR_SPEND, shared.money_ledger)]
        allocations.append(acc.spend_allocation(customer_pk, currency, period, cap))
    if prepaid:
        shared.consumed_id = ids.consumed(currency, period)
        accounts.append(acc.consumed_account(customer_pk, currency, period))
    return shared
