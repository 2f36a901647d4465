"""Hard limits at ingest: every billable event of a customer under a limit debits the ledger before it is
accepted, in the same request (docs/ledger.md).

Per event, one linked chain (all or nothing): usage counters (the period's cumulative quantity per
charge, for marginal pricing), the meter's quota account, the spend-cap account and the prepaid
credit wallet. Transfer ids derive from (customer, event_id, leg), so a retried event never debits
twice and a retried rejected event stays rejected (``id_already_failed``). All chains of a batch go
to the ledger in one ``create_transfers`` call.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing.catalog import pricing
from billing.catalog.models import Meter, RateCardVersion, Subscription
from billing.catalog.schema import charge_spec
from billing.guardrails import accounts as acc
from ledger.backends import get_ledger
from ledger.codes import AccountCode, TransferCode, currency_ledger, unit_ledger
from ledger.ids import deriver
from ledger.types import Account, Status, Transfer, TransferFlags

ADDITIVE = {Meter.Aggregation.SUM, Meter.Aggregation.COUNT}
LINEAR = {"per_unit"}  # charge models whose marginal price needs no running total (no usage counter)
CODES = {"quota": "quota_exceeded", "spend": "spend_cap_exceeded", "credits": "insufficient_credits"}
MESSAGES = {
    "quota": "This event would exceed the period's hard limit for meter '{meter}'.",
    "spend": "This event would exceed the period's spend cap.",
    "credits": "This event costs more than the prepaid credits left.",
}


@dataclass
class Coverage:
    """What a reservation already holds for the events settling it: consumed in event order, so only
    usage beyond the reservation goes through the limits again."""

    quantity: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)

    def take_quantity(self, wanted: Decimal) -> Decimal:
        taken = min(wanted, self.quantity)
        self.quantity -= taken
        return taken

    def take_cost(self, wanted: Decimal) -> Decimal:
        taken = min(wanted, self.cost)
        self.cost -= taken
        return taken


@dataclass
class EventUsage:
    """What enforcement needs of one accepted-so-far event."""

    key: Any  # the caller's handle for the result
    customer_pk: int
    event_id: str
    meter: Meter
    quantity: Decimal
    usage_at: datetime
    dimensions: dict[str, str]
    coverage: Coverage | None = None
    covered_quantity: Decimal = Decimal(0)  # set by enforcement: what the reservation's hold paid for


@dataclass
class Refusal:
    code: str  # quota_exceeded | spend_cap_exceeded | insufficient_credits | idempotency_conflict
    message: str
    remaining: Decimal | None = None
    unit: str = ""

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.remaining is not None:
            body["remaining"] = str(self.remaining)
            body["unit"] = self.unit
        return body


@dataclass
class _Chain:
    event: EventUsage
    transfers: list[Transfer] = field(default_factory=list)
    legs: list[str] = field(default_factory=list)
    accounts: dict[str, tuple[int, str]] = field(default_factory=dict)  # leg -> (account id, unit)


class Terms:
    """Subscriptions and rate-card versions of a batch's customers, loaded once."""

    def __init__(self, customer_pks: Iterable[int]) -> None:
        self.subscriptions: dict[int, list[Subscription]] = defaultdict(list)
        for sub in Subscription.objects.select_related("plan").filter(customer_id__in=set(customer_pks)):
            self.subscriptions[sub.customer_id].append(sub)
        plan_pks = {s.plan_id for subs in self.subscriptions.values() for s in subs}
        self.versions: dict[int, list[RateCardVersion]] = defaultdict(list)
        for version in RateCardVersion.objects.filter(plan_id__in=plan_pks).order_by("effective_from"):
            self.versions[version.plan_id].append(version)

    def at(self, customer_pk: int, moment: datetime) -> tuple[Subscription, RateCardVersion] | None:
        sub = next((s for s in self.subscriptions.get(customer_pk, ())
                    if s.start <= moment and (s.end is None or moment < s.end)), None)
        if sub is None:
            return None
        version = None
        for candidate in self.versions.get(sub.plan_id, ()):
            if candidate.effective_from <= moment:
                version = candidate
        return (sub, version) if version is not None else None


def _charge_key(charge: dict[str, Any], group: str | None) -> str:
    filt = ",".join(f"{k}={v}" for k, v in sorted((charge.get("filter") or {}).items()))
    return f"{filt}|{group or ''}"


def marginal_cost(charge: dict[str, Any], group: str | None, before: Decimal, quantity: Decimal,
                  spec: pricing.ChargeSpec | None = None) -> Decimal:
    """What ``quantity`` more costs after ``before`` units this period, markup included (exact).
    ``spec``: the charge's parsed terms, when the caller prices many events with one charge."""
    spec = spec or charge_spec(charge)
    if charge["model"] in LINEAR:  # the price of a unit does not depend on the period's quantity
        amount = pricing.price(quantity, spec).amount
    else:
        amount = pricing.price(before + quantity, spec).amount - pricing.price(before, spec).amount
    markup = charge.get("markup")
    if markup:
        amount = pricing.with_markup(amount, Decimal(markup["percent"].get(group, markup.get("default") or "0")))
    return amount


def _matching_charges(definition: dict[str, Any], event: EventUsage) -> list[tuple[dict[str, Any], str | None]]:
    out = []
    for charge in definition.get("charges", []):
        if charge["meter"] != event.meter.key:
            continue
        if any(event.dimensions.get(k) != v for k, v in (charge.get("filter") or {}).items()):
            continue
        markup = charge.get("markup")
        out.append((charge, event.dimensions.get(markup["dimension"]) if markup else None))
    return out


CLOSED = {Status.PENDING_TRANSFER_ALREADY_POSTED, Status.PENDING_TRANSFER_ALREADY_VOIDED,
          Status.PENDING_TRANSFER_EXPIRED}


@dataclass
class _Charge:
    """A charge matching an event: its terms parsed once per batch, and its usage counter (None when the
    charge is linear and needs no running total)."""

    index: int  # position among the event's matching charges: part of the counter transfer's id
    charge: dict[str, Any]
    group: str | None
    spec: pricing.ChargeSpec
    counter_id: int | None
    # F(Q) by Q, shared by every _Charge of the same charge in the batch: an event's F(Q_before) is the
    # previous event's F(Q_before + q), so each price is computed once instead of twice (the same pure
    # function of the same value).
    prices: dict[Decimal, Decimal]

    def marginal(self, before: Decimal, quantity: Decimal) -> Decimal:
        """marginal_cost(charge, group, before, quantity), with the prices remembered."""
        if self.counter_id is None:
            return marginal_cost(self.charge, self.group, before, quantity, self.spec)
        prices = self.prices
        after = before + quantity
        high = prices.get(after)
        if high is None:
            high = prices[after] = pricing.price(after, self.spec).amount
        low = prices.get(before)
        if low is None:
            low = prices[before] = pricing.price(before, self.spec).amount
        amount = high - low
        markup = self.charge.get("markup")
        if markup:
            amount = pricing.with_markup(amount, Decimal(markup["percent"].get(self.group, markup.get("default") or "0")))
        return amount


@dataclass
class _Terms:
    """What every event of one (customer, subscription, rate-card version, meter, period) of a batch shares:
    limits, account ids, and charges by dimensions. Worked out once per batch, not once per event (the
    ids are blake2b hashes, and per event they cost more than the pricing)."""

    customer_pk: int
    meter: Meter
    period: int
    definition: dict[str, Any]
    currency: str
    hard: Decimal | None
    cap: Decimal | None
    prepaid: bool
    priced: bool
    quota_id: int = 0
    spend_id: int = 0
    wallet_id: int = 0
    unit_ledger: int = 0
    money_ledger: int = 0
    charges: dict[tuple[tuple[str, str], ...], list[_Charge]] = field(default_factory=dict)
    prices: dict[int, dict[Decimal, Decimal]] = field(default_factory=dict)  # by id() of the charge's definition
    # the usage transfers' ids: derive("usage-<leg>", customer, event_id[, charge index]), prefix encoded once
    counter_transfer_id: Callable[..., int] = field(init=False)
    quota_transfer_id: Callable[..., int] = field(init=False)
    spend_transfer_id: Callable[..., int] = field(init=False)
    credits_transfer_id: Callable[..., int] = field(init=False)

    def __post_init__(self) -> None:
        self.counter_transfer_id = deriver("usage-counter", self.customer_pk)
        self.quota_transfer_id = deriver("usage-quota", self.customer_pk)
        self.spend_transfer_id = deriver("usage-spend", self.customer_pk)
        self.credits_transfer_id = deriver("usage-credits", self.customer_pk)

    def matching(self, event: EventUsage, counters_needed: dict[int, Account]) -> list[_Charge]:
        key = tuple(sorted(event.dimensions.items()))
        found = self.charges.get(key)
        if found is None:
            found = []
            for index, (charge, group) in enumerate(_matching_charges(self.definition, event)):
                counter_id = None
                if charge["model"] not in LINEAR:
                    account = acc.counter_account(self.customer_pk, self.meter.pk, _charge_key(charge, group), self.period)
                    counters_needed[account.id] = account
                    counter_id = account.id
                found.append(_Charge(index, charge, group, charge_spec(charge), counter_id,
                                     self.prices.setdefault(id(charge), {})))
            self.charges[key] = found
        return found


_LINKED = TransferFlags.LINKED


def enforce(events: list[EventUsage], prefix: list[Transfer] | None = None) -> dict[Any, Refusal]:
    """Debit the ledger for ``events`` (in order); return the refused ones by key. Events of customers
    without a plan limit, spend cap or credit wallet pass untouched (and cost no ledger call).
    ``prefix`` (a reservation's post/void) runs first in the same ledger batch."""
    prefix = prefix or []
    events = [e for e in events if e.quantity > 0]
    if not events:
        _submit(prefix)
        return {}
    terms = Terms(e.customer_pk for e in events)
    in_terms: list[tuple[EventUsage, tuple[Subscription, RateCardVersion]]] = []
    for event in events:
        found = terms.at(event.customer_pk, event.usage_at)
        if found is not None:
            in_terms.append((event, found))
    if not in_terms:
        _submit(prefix)
        return {}
    ledger = get_ledger()
    currencies = {(e.customer_pk, t[0].plan.currency) for e, t in in_terms}
    wallet_ids = {(c, cur): acc.Ids(c).wallet(cur) for c, cur in currencies}
    wallets = ledger.lookup_accounts(list(wallet_ids.values()))

    accounts: list[Account] = []
    allocations: list[Transfer] = []
    counters_needed: dict[int, Account] = {}
    by_key: dict[tuple[int, int, int, int, int], _Terms | None] = {}
    plans: list[tuple[EventUsage, _Terms, list[_Charge]]] = []
    for event, (sub, version) in in_terms:
        period = acc.period_key(event.usage_at)
        key = (event.customer_pk, sub.pk, version.pk, event.meter.pk, period)
        if key in by_key:
            shared = by_key[key]
        else:
            shared = by_key[key] = _terms_of(event, sub, version, period, wallet_ids, wallets, accounts, allocations)
        if shared is None:
            continue
        plans.append((event, shared, shared.matching(event, counters_needed) if shared.priced else []))
    if not plans:
        _submit(prefix)
        return {}
    for counter in counters_needed.values():
        accounts += [counter, acc.operator_account(AccountCode.OPERATOR_COUNTER, counter.ledger)]
    acc.ensure(accounts, allocations)
    cumulative = {k: a.debits_posted for k, a in ledger.lookup_accounts(list(counters_needed)).items()}

    chains = [_chain(event, shared, charges, cumulative) for event, shared, charges in plans]
    transfers = prefix + [t for chain in chains for t in chain.transfers]
    statuses = ledger.create_transfers(transfers) if transfers else []
    _check_prefix(prefix, statuses[:len(prefix)])
    return _refusals(chains, statuses[len(prefix):], ledger)


def _terms_of(event: EventUsage, sub: Subscription, version: RateCardVersion, period: int,
              wallet_ids: dict[tuple[int, str], int], wallets: dict[int, Account], accounts: list[Account],
              allocations: list[Transfer]) -> _Terms | None:
    """The shared terms of the event's (customer, plan version, meter, period), or None when nothing limits
    it; the accounts and period allocations it needs are appended (in first-seen order)."""
    definition = version.definition
    currency = sub.plan.currency
    customer_pk, meter = event.customer_pk, event.meter
    hard = next((Decimal(lim["hard"]) for lim in definition.get("limits", [])
                 if lim["meter"] == meter.key and lim.get("hard") is not None), None)
    cap = Decimal(definition["spend_cap"]) if definition.get("spend_cap") else None
    wallet_id = wallet_ids[(customer_pk, currency)]
    prepaid = wallet_id in wallets
    if hard is None and cap is None and not prepaid:
        return None
    priced = (cap is not None or prepaid) and meter.aggregation in ADDITIVE
    ids = acc.Ids(customer_pk)
    shared = _Terms(customer_pk, meter, period, definition, currency, hard, cap, prepaid, priced,
                    wallet_id=wallet_id, unit_ledger=unit_ledger(meter.pk), money_ledger=currency_ledger(currency))
    if hard is not None:
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
        accounts.append(acc.operator_account(AccountCode.OPERATOR_REVENUE, shared.money_ledger))
    return shared


def _submit(prefix: list[Transfer]) -> None:
    if prefix:
        _check_prefix(prefix, get_ledger().create_transfers(prefix))


def _check_prefix(prefix: list[Transfer], statuses: list[Status]) -> None:
    for transfer, status in zip(prefix, statuses, strict=True):
        if not (status.ok or status in CLOSED):
            raise RuntimeError(f"ledger refused closing hold {transfer.pending_id}: {status.value}")


def _chain(event: EventUsage, shared: _Terms, charges: list[_Charge], cumulative: dict[int, int]) -> _Chain:
    chain = _Chain(event)
    customer_pk, meter_pk, period = event.customer_pk, event.meter.pk, shared.period
    qty = acc.qty_units(event.quantity)
    covered_qty = event.coverage.take_quantity(event.quantity) if event.coverage else Decimal(0)
    event.covered_quantity = covered_qty
    cost = Decimal(0)
    legs: list[tuple[int, int, int, int, int, TransferCode]] = []  # id, debit, credit, amount, ledger, code
    if shared.priced:
        unit = shared.unit_ledger
        for charge in charges:
            if charge.counter_id is None:
                cost += charge.marginal(Decimal(0), event.quantity)
                continue
            counter_id = charge.counter_id
            cost += charge.marginal(acc.units_to_qty(cumulative.get(counter_id, 0)), event.quantity)
            cumulative[counter_id] = cumulative.get(counter_id, 0) + qty
            legs.append((shared.counter_transfer_id(event.event_id, charge.index), counter_id,
                         acc.operator_account(AccountCode.OPERATOR_COUNTER, unit).id, qty, unit,
                         TransferCode.USAGE_COUNTER))
            chain.legs.append("counter")
    uncovered = acc.qty_units(event.quantity - covered_qty)
    if shared.hard is not None and uncovered:
        unit = shared.unit_ledger
        legs.append((shared.quota_transfer_id(event.event_id), shared.quota_id,
                     acc.operator_account(AccountCode.OPERATOR_QUOTA, unit).id, uncovered, unit, TransferCode.USAGE_QUOTA))
        chain.legs.append("quota")
        chain.accounts["quota"] = (shared.quota_id, event.meter.unit)
    if event.coverage:
        cost -= event.coverage.take_cost(cost)
    cost_units = acc.money_units_ceil(cost)
    money = shared.money_ledger
    if shared.cap is not None and cost_units:
        legs.append((shared.spend_transfer_id(event.event_id), shared.spend_id,
                     acc.operator_account(AccountCode.OPERATOR_SPEND, money).id, cost_units, money,
                     TransferCode.USAGE_SPEND))
        chain.legs.append("spend")
        chain.accounts["spend"] = (shared.spend_id, shared.currency)
    if shared.prepaid and cost_units:
        legs.append((shared.credits_transfer_id(event.event_id), shared.wallet_id,
                     acc.operator_account(AccountCode.OPERATOR_REVENUE, money).id, cost_units, money,
                     TransferCode.USAGE_CREDITS))
        chain.legs.append("credits")
        chain.accounts["credits"] = (shared.wallet_id, shared.currency)
    # link every transfer of the event's chain but the last: all or nothing
    last = len(legs) - 1
    chain.transfers = [
        Transfer(id=tid, debit_account_id=debit, credit_account_id=credit, amount=amount, ledger=ledger, code=code,
                 flags=_LINKED if i < last else TransferFlags.NONE, user_data_128=customer_pk, user_data_64=meter_pk,
                 user_data_32=period)
        for i, (tid, debit, credit, amount, ledger, code) in enumerate(legs)]
    return chain


def _refusals(chains: list[_Chain], statuses: list[Status], ledger: Any) -> dict[Any, Refusal]:
    refused: dict[Any, tuple[_Chain, str]] = {}
    position = 0
    for chain in chains:
        own = statuses[position:position + len(chain.transfers)]
        position += len(chain.transfers)
        for leg, status in zip(chain.legs, own, strict=True):
            if status.ok or status is Status.LINKED_EVENT_FAILED:
                continue
            if status in (Status.EXCEEDS_CREDITS, Status.ID_ALREADY_FAILED) and leg in CODES:
                refused[chain.event.key] = (chain, leg)
            elif status.value.startswith("exists_with_different"):
                # The event's legs were applied before (a retry, or a concurrent twin): marginal prices
                # depend on when they are computed, so a retry may price differently, but nothing is
                # applied twice. Whether the body is the same is the event table's call (duplicate/409).
                pass
            else:
                raise RuntimeError(f"ledger refused usage of event {chain.event.event_id}: {leg} {status.value}")
            break
    if not refused:
        return {}
    ids = [c.accounts[leg][0] for c, leg in refused.values() if leg in c.accounts]
    balances = ledger.lookup_accounts(ids)
    out: dict[Any, Refusal] = {}
    for key, (chain, leg) in refused.items():
        if leg == "conflict":
            out[key] = Refusal("idempotency_conflict",
                               f"event_id '{chain.event.event_id}' was already used with a different body.")
            continue
        account_id, unit = chain.accounts[leg]
        account = balances.get(account_id)
        available = max(account.available, 0) if account else 0
        remaining = acc.units_to_qty(available) if leg == "quota" else acc.units_to_money(available)
        out[key] = Refusal(CODES[leg], MESSAGES[leg].format(meter=chain.event.meter.key),
                           Decimal(format(remaining.normalize(), "f")) if remaining else Decimal(0), unit)
    return out
