"""Hard limits at ingest: every billable event of a customer under a limit debits the ledger before it is
accepted, in the same request (docs/ledger.md).

Per event, all or nothing: usage counters (the period's cumulative quantity per charge, for marginal
pricing), the meter's quota account, the spend-cap account and the prepaid credit wallet. Two ways
of writing it:

- ``enforce`` (a ledger outside the database, and settling reservations): one linked chain per event,
  ids derived from (customer, event_id, leg), so a retried event never debits twice and a retried
  rejected event stays rejected (``id_already_failed``); all chains of a batch in one
  ``create_transfers`` call, before the events are stored.
- ``BatchDebit`` (a ledger in the same database): the same decisions on locked accounts, written as one
  transfer per account and batch in the transaction that stores the events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from decimal import Context as DecimalContext
from typing import Any

from django.db import connection

from billing.catalog import pricing
from billing.catalog.models import Meter, Plan, RateCardVersion, Subscription
from billing.catalog.money import LEDGER_SCALE
from billing.catalog.schema import charge_spec
from billing.common.fields import aware_utc
from billing.customers.models import Customer
from billing.guardrails import accounts as acc
from ledger.backends import get_ledger
from ledger.codes import AccountCode, TransferCode, currency_ledger, unit_ledger
from ledger.ids import derive, deriver
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
        if wanted <= 0:  # a credit-back (negative marginal cost) takes nothing from what is held
            return Decimal(0)
        taken = min(wanted, self.cost)
        self.cost -= taken
        return taken


@dataclass(slots=True)
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


@dataclass(frozen=True, slots=True)
class Sub:
    """What limits need of a subscription."""

    pk: int
    customer_id: int
    plan_id: int
    start: datetime
    end: datetime | None
    currency: str


@dataclass(frozen=True, slots=True)
class Version:
    """What limits need of a rate-card version (immutable once stored)."""

    pk: int
    plan_id: int
    effective_from: datetime
    definition: dict[str, Any]


# Rate-card versions are never edited, so their parsed definitions are kept in process, keyed by id and
# creation time (a test database that is rolled back may hand an id out again).
_DEFINITIONS: dict[tuple[int, datetime], dict[str, Any]] = {}


_TERMS_COLUMNS = 's.id, s.plan_id, s.start, s."end", p.currency, v.id, v.effective_from, v.created_at'
_TERMS_JOINS = (f"JOIN {Plan._meta.db_table} p ON p.id = s.plan_id "
                f"JOIN {RateCardVersion._meta.db_table} v ON v.plan_id = s.plan_id")


class Terms:
    """Subscriptions and rate-card versions of a batch's customers, loaded once: one plain statement
    (every limited ingest batch asks; the ORM's two querysets cost about 4 ms), or none when ingest read
    them with its customers (``of_customers``); definitions from the process cache."""

    def __init__(self, customer_pks: Iterable[int], rows: list[tuple[Any, ...]] | None = None) -> None:
        """``rows``: (customer, subscription, plan, start, end, currency, version, effective_from,
        created_at) as ``of_customers`` read them; read here when not given."""
        self.subscriptions: dict[int, list[Sub]] = defaultdict(list)
        self.versions: dict[int, list[Version]] = defaultdict(list)
        pks = sorted(set(customer_pks))
        if rows is None and pks:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT s.customer_id, {_TERMS_COLUMNS} FROM {Subscription._meta.db_table} s {_TERMS_JOINS} "  # noqa: S608
                    f"WHERE s.customer_id IN ({', '.join(['%s'] * len(pks))})", pks)
                rows = cursor.fetchall()
        self._load(rows or [])

    @classmethod
    def of_customers(cls, external_ids: Iterable[str]) -> tuple[dict[str, tuple[int, bool]], Terms]:
        """The customers by external id, each as (pk, has any subscription), and the terms of all of them,
        in one statement (ingest's first read of every batch)."""
        ids = sorted(set(external_ids))
        if not ids:
            return {}, cls([])
        customers: dict[str, tuple[int, bool]] = {}
        rows: list[tuple[Any, ...]] = []
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT c.id, c.external_id, EXISTS (SELECT 1 FROM {Subscription._meta.db_table} x "  # noqa: S608
                f"WHERE x.customer_id = c.id), {_TERMS_COLUMNS} FROM {Customer._meta.db_table} c "
                f"LEFT JOIN ({Subscription._meta.db_table} s {_TERMS_JOINS}) ON s.customer_id = c.id "
                f"WHERE c.external_id IN ({', '.join(['%s'] * len(ids))})", ids)
            for pk, external_id, subscribed, *terms in cursor.fetchall():
                customers[external_id] = (pk, bool(subscribed))
                if terms[0] is not None:
                    rows.append((pk, *terms))
        return customers, cls([pk for pk, _ in customers.values()], rows)

    def _load(self, rows: list[tuple[Any, ...]]) -> None:
        rows = sorted(((cid, sid, plan, aware_utc(start), aware_utc(end), cur, vid, aware_utc(eff), aware_utc(created))
                       for cid, sid, plan, start, end, cur, vid, eff, created in rows),
                      key=lambda row: (row[1], row[7]))  # subscription, then effective_from
        missing = {vid for *_, vid, _eff, created in rows if (vid, created) not in _DEFINITIONS}
        if missing:
            for vid, created, definition in RateCardVersion.objects.filter(pk__in=missing).values_list(
                    "pk", "created_at", "definition"):
                _DEFINITIONS[(vid, created)] = definition
        seen_subs: set[int] = set()
        seen_versions: set[int] = set()
        for cid, sid, plan, start, end, cur, vid, eff, created in rows:
            if sid not in seen_subs:
                seen_subs.add(sid)
                self.subscriptions[cid].append(Sub(sid, cid, plan, start, end, cur))
            if vid not in seen_versions:
                seen_versions.add(vid)
                self.versions[plan].append(Version(vid, plan, eff, _DEFINITIONS[(vid, created)]))
        for versions in self.versions.values():
            versions.sort(key=lambda v: v.effective_from)

    def at(self, customer_pk: int, moment: datetime) -> tuple[Sub, Version] | None:
        sub = next((s for s in self.subscriptions.get(customer_pk, ())
                    if s.start <= moment and (s.end is None or moment < s.end)), None)
        if sub is None:
            return None
        version = None
        for candidate in self.versions.get(sub.plan_id, ()):
            if candidate.effective_from <= moment:
                version = candidate
        return (sub, version) if version is not None else None

    def span(self, customer_pk: int, moment: datetime) -> tuple[Sub, Version, datetime, datetime] | None:
        """``at``, with the half-open stretch [lo, hi) around ``moment`` in which the answer and the limits'
        period stay the same (a batch's events mostly share one)."""
        found = self.at(customer_pk, moment)
        if found is None:
            return None
        sub, version = found
        lo, hi = acc.period_bounds(moment)
        lo = max(lo, sub.start, version.effective_from)
        if sub.end is not None:
            hi = min(hi, sub.end)
        later = [v.effective_from for v in self.versions.get(sub.plan_id, ()) if v.effective_from > moment]
        if later:
            hi = min(hi, min(later))
        return sub, version, lo, hi


def _charge_key(charge: dict[str, Any], group: str | None) -> str:
    filt = ",".join(f"{k}={v}" for k, v in sorted((charge.get("filter") or {}).items()))
    return f"{filt}|{group or ''}"


def counter_keys(matching: list[tuple[dict[str, Any], str | None]]) -> list[str]:
    """The usage counters' keys of an event's matching charges: ``_charge_key``, and for a charge whose key
    an earlier one of them has (two charges of a meter with the same filter), that key with ``#<n>``, so
    that each charge counts its own quantity (a shared counter would be moved once per charge)."""
    keys: list[str] = []
    seen: dict[str, int] = {}
    for charge, group in matching:
        key = _charge_key(charge, group)
        count = seen[key] = seen.get(key, 0) + 1
        keys.append(f"{key}#{count - 1}" if count > 1 else key)
    return keys


def marginal_cost(charge: dict[str, Any], group: str | None, before: Decimal, quantity: Decimal,
                  spec: pricing.ChargeSpec | None = None) -> Decimal:
    """What ``quantity`` more costs after ``before`` units this period, markup included (exact).
    ``spec``: the charge's parsed terms, when the caller prices many events with one charge."""
    spec = spec or charge_spec(charge)
    if charge["model"] in LINEAR:  # the price of a unit does not depend on the period's quantity
        before = Decimal(0)
    amount = pricing.marginal(before, quantity, spec)
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
    markup: Decimal | None = None  # percent for the event's group, parsed once
    counter: Account | None = None  # the usage counter's account (to create if missing)
    # the terms in integers, when they allow it (_fast_terms): (lower, upper or None, price) per tier, in
    # quantity units and price units; one open tier for per_unit
    fast: tuple[tuple[int, int | None, int], ...] | None = None

    def marginal(self, before: Decimal, quantity: Decimal) -> Decimal:
        """marginal_cost(charge, group, before, quantity), with the markup parsed once."""
        amount = pricing.marginal(before, quantity, self.spec)
        if self.markup is not None:
            amount = pricing.with_markup(amount, self.markup)
        return amount

    def ledger_units(self, before: int, quantity: Decimal) -> int:
        """What ``quantity`` more costs after ``before`` quantity units this period, in ledger money units,
        telescoping (docs/ledger.md, "Rounding"): ``ceil(F(after)) - ceil(F(before))`` with ``F`` the charge's
        price of the period's quantity (markup included) and ``ceil`` up to the ledger scale, so that a
        period's amounts add up to ``ceil(F(period's quantity))``. Negative when the event takes the period
        into a cheaper volume tier. When the exact marginal cost is a whole number of units it is the
        amount, whatever ``F(before)``: one multiplication (the common case)."""
        start = acc.units_to_qty(before)
        exact = _EXACT.scaleb(self.marginal(start, quantity), LEDGER_SCALE)
        if exact == exact.to_integral_value():
            return int(exact)
        price = pricing.price(start, self.spec).amount
        if self.markup is not None:
            price = pricing.with_markup(price, self.markup)
        base = _EXACT.scaleb(price, LEDGER_SCALE)
        return _ceil(_EXACT.add(base, exact)) - _ceil(base)


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
    consumed_id: int = 0  # the period's credits-consumed account (the credits legs' other side), when prepaid
    unit_ledger: int = 0
    money_ledger: int = 0
    charges: dict[tuple[tuple[str, str], ...], list[_Charge]] = field(default_factory=dict)
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

    def operator_ids(self, counted: bool) -> set[int]:
        """The accounts on the other side of the terms' transfers (the operator accounts, and the period's
        credits-consumed account), credited by usage and debited by credit-backs (``counted``: some charge
        has a usage counter)."""
        legs = [(_COUNTER, self.unit_ledger)] if counted else []
        if self.hard is not None:
            legs.append((_QUOTA, self.unit_ledger))
        if self.cap is not None:
            legs.append((_SPEND, self.money_ledger))
        operators = {acc.operator_account(OPERATOR_OF[code], ledger).id for code, ledger in legs}
        if self.prepaid:
            operators.add(self.consumed_id)
        return operators

    def matching(self, event: EventUsage) -> list[_Charge]:
        """The charges the event's dimensions match, worked out once per set of dimensions (the same list
        object for every event with those dimensions)."""
        key = tuple(event.dimensions.items())  # the same dimensions in another order: a second entry, as right
        found = self.charges.get(key)
        if found is None:
            found = []
            matching = _matching_charges(self.definition, event)
            for index, ((charge, group), counter_key) in enumerate(zip(matching, counter_keys(matching), strict=True)):
                counter = None
                if charge["model"] not in LINEAR:
                    counter = acc.counter_account(self.customer_pk, self.meter.pk, counter_key, self.period)
                markup = charge.get("markup")
                percent = Decimal(markup["percent"].get(group, markup.get("default") or "0")) if markup else None
                spec = charge_spec(charge)
                found.append(_Charge(index, charge, group, spec, counter.id if counter else None, percent,
                                     counter=counter, fast=None if percent is not None else _fast_terms(spec)))
            if len(self.charges) >= _CHARGES_MAX:  # kept across batches (_SHARED): bounded, whatever the dimensions
                self.charges.clear()
            self.charges[key] = found
        return found


_LINKED = TransferFlags.LINKED


@dataclass
class _Prepared:
    """A batch's limited events with their shared terms and matching charges, accounts ensured."""

    plans: list[tuple[EventUsage, _Terms, list[_Charge]]]  # empty when no event is limited
    counters: list[int]
    wallet_ids: list[int]  # the credit wallets the events' customers would have in their plans' currencies
    wallets: set[int]  # those taken to exist
    # the distinct terms of the plans, each with whether one of its events' charges has a usage counter
    # (a batch's events mostly share one: the accounts are worked out per terms, not per event)
    terms: dict[int, tuple[_Terms, bool]] = field(default_factory=dict)

    def bounded(self) -> set[int]:
        """The balance-bounded accounts the events debit: quotas, spend caps, credit wallets."""
        return {i for shared, _ in self.terms.values()
                for i in (shared.quota_id, shared.spend_id, shared.wallet_id if shared.prepaid else 0) if i}

    def locks(self) -> set[int]:
        """The accounts a batch debit reads (and, deciding under locks, holds): bounded ones, usage counters,
        and the operator accounts its transfers credit. All of them: the careful pass locks them in one
        ascending order before it books, so that it never waits for an operator account while holding the
        customer's, which a concurrent booking (ascending order too) may hold the other way round."""
        operators = {i for shared, counted in self.terms.values() for i in shared.operator_ids(counted)}
        return self.bounded() | set(self.counters) | operators


def _wallets_in_ledger(ids: list[int]) -> set[int]:
    return set(get_ledger().lookup_accounts(ids))


def _prepare(events: list[EventUsage], terms: Terms | None = None,
             wallets: Callable[[list[int]], set[int]] = _wallets_in_ledger) -> _Prepared | None:
    """Work out, once per batch, which events a limit applies to and with which terms (read unless the
    caller has them); create the accounts and period allocations they need. ``wallets`` tells which
    credit wallets exist (the ledger by default). None when no event has terms."""
    terms = terms or Terms(e.customer_pk for e in events)
    # Pass 1: each event's (customer, subscription, rate-card version, meter, period), found once per
    # stretch of time in which it cannot change, not once per event.
    spans: dict[tuple[int, int], tuple[datetime, datetime, tuple[int, int, int, int, int]]] = {}
    firsts: dict[tuple[int, int, int, int, int], tuple[EventUsage, Sub, Version, int]] = {}
    keyed: list[tuple[EventUsage, tuple[int, int, int, int, int]]] = []
    for event in events:
        at, where = event.usage_at, (event.customer_pk, id(event.meter))
        span = spans.get(where)
        if span is None or not span[0] <= at < span[1]:
            found = terms.span(event.customer_pk, at)
            if found is None:
                continue
            sub, version, lo, hi = found
            period = acc.period_key(at)
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
    by_key = {key: _shared_terms(event, sub, version, period, wallet_ids, existing, accounts, allocations)
              for key, (event, sub, version, period) in firsts.items()}
    plans: list[tuple[EventUsage, _Terms, list[_Charge]]] = []
    lists: dict[int, list[_Charge]] = {}  # the distinct charge lists of the batch, for their counters
    terms_of: dict[int, tuple[_Terms, bool]] = {}
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
    if plans:
        for counter in counters_needed.values():
            accounts += [counter, acc.operator_account(AccountCode.OPERATOR_COUNTER, counter.ledger)]
        acc.ensure(accounts, allocations)
    return _Prepared(plans, list(counters_needed), list(wallet_ids.values()), existing, terms_of)


def enforce(events: list[EventUsage], prefix: list[Transfer] | None = None,
            terms: Terms | None = None) -> dict[Any, Refusal]:
    """Debit the ledger for ``events`` (in order), one linked chain per event with ids derived from the
    event; return the refused ones by key. Events of customers without a plan limit, spend cap or credit
    wallet pass untouched (and cost no ledger call). ``prefix`` (a reservation's post/void) runs first in
    the same ledger batch. For any backend, before the events are stored: a retry finds its transfers
    by their ids (``exists``) and debits nothing twice."""
    prefix = prefix or []
    events = [e for e in events if e.quantity > 0]
    prepared = _prepare(events, terms) if events else None
    if prepared is None or not prepared.plans:
        _submit(prefix)
        return {}
    ledger = get_ledger()
    cumulative = {k: a.debits_posted for k, a in ledger.lookup_accounts(prepared.counters).items()}
    chains = [_chain(event, shared, charges, cumulative) for event, shared, charges in prepared.plans]
    transfers = prefix + [t for chain in chains for t in chain.transfers]
    statuses = ledger.create_transfers(transfers) if transfers else []
    _check_prefix(prefix, statuses[:len(prefix)])
    return _refusals(chains, statuses[len(prefix):], ledger)


class BatchDebit:
    """Limits for a ledger that shares the database (``shares_database``), debited in the caller's open
    transaction together with the events it stores (billing.usage.ingest.debit).

    The same decisions as ``enforce`` (events in order; an event is accepted only if every leg of its
    chain fits: quota, spend cap, credits; marginal prices from the period's usage counters), taken in
    Python on the accounts as read (see below), and written as one transfer per (account,
    meter, period) for the whole batch instead of one per event and leg: a 1,000-event batch writes a
    handful of ledger rows, not 3,000. Exactly once comes from the event table: only events the caller's
    ``INSERT ... ON CONFLICT DO NOTHING`` inserted in the same transaction are debited, and the debit
    commits or rolls back with them. Each batch transfer's id derives from its first event's id
    (docs/ledger.md).

    Construction reads the accounts (call it inside ``transaction.atomic()``), locked until the caller's
    transaction ends, or with ``lock=False`` not locked: then the decisions hold only if the accounts are
    still as read when the batch is booked, which ``write`` states to the ledger (``book_checked``: the
    bounded accounts must still hold the batch, each usage counter must still be in the tier the events
    were priced in); if they are not, the ledger refuses (``LedgerRefused``) and the caller runs the batch
    again with locks. ``decide`` takes the decisions; ``write`` books the accepted events that were
    stored."""

    def __init__(self, events: list[EventUsage], terms: Terms | None = None, *, lock: bool = True) -> None:
        events = [e for e in events if e.quantity > 0 and e.coverage is None]
        # (account, code, ledger, meter, period) -> [amount, first event, terms]; per accepted event when
        # some events may not be stored (the careful pass), else the batch's sums
        self.accepted: list[tuple[EventUsage, list[tuple[int, int, int, int, int, int, _Terms]]]] = []
        self.sums: dict[tuple[int, int, int, int, int], list[Any]] | None = None
        self.locked = lock
        self.expect: dict[int, list[Any]] = {}  # counter -> [low, high] its value may have when booked
        self.ledger = get_ledger()
        read = self.ledger.lock_accounts if lock else self.ledger.lookup_accounts
        # Which credit wallets exist is first taken from what this process has seen (a wallet is never
        # deleted), and checked by the lock itself: the candidate wallets are locked with the accounts
        # (one statement). Only a wallet this process had not seen yet makes the work be done again.
        prepared = _prepare(events, terms, wallets=acc.known_wallets) if events else None
        self.prepared = None
        if prepared is None:
            return
        locked = read(sorted(prepared.locks() | set(prepared.wallet_ids)))
        found = {i for i in prepared.wallet_ids if i in locked}
        if found != prepared.wallets:
            acc.remember_wallets(found)
            prepared = _prepare(events, terms, wallets=lambda ids: found)
            assert prepared is not None
            missing = prepared.locks() - locked.keys()
            if missing:  # accounts just created for the wallet's prepaid pricing (usage counters)
                locked.update(read(sorted(missing)))
        if not prepared.plans:
            return
        self.prepared = prepared
        self.available = {i: locked[i].available for i in prepared.bounded()}
        self.cumulative = {i: locked[i].debits_posted for i in prepared.counters}
        self.start = dict(self.cumulative)

    def decide(self, skip: set[Any] | None = None) -> dict[Any, Refusal]:
        """Decide every event in order (but those whose key is in ``skip``); return the refused ones.

        Without ``skip`` the caller has stored every event already (the optimistic pass): when no event's
        cost is negative, amounts only grow the accounts' debits, so when the whole batch fits every
        account, every event fits in turn, and the events are only priced in order and summed. Otherwise
        (a batch that does not fit, an event whose marginal cost is negative, which can make a prefix of
        the batch exceed an account that its whole total fits, or events that may yet turn out stored by
        another request) they are decided one by one."""
        if self.prepared is None:
            return {}
        if skip is None:
            try:
                sums: dict[tuple[int, int, int, int, int], list[Any]] | None = self._sums()
            except _NegativeCost:
                sums = None
            if sums is not None:
                needed: dict[int, int] = defaultdict(int)
                for (account_id, code, *_), (amount, *_rest) in sums.items():
                    if code != _COUNTER:
                        needed[account_id] += amount
                if all(amount <= self.available[account_id] for account_id, amount in needed.items()):
                    self.sums = sums
                    return {}
        return self._one_by_one(skip or set())

    def _sums(self) -> dict[tuple[int, int, int, int, int], list[Any]]:
        """The batch's amounts per (account, code, ledger, meter, period), each with its first event and its
        terms, all events accepted; ``_NegativeCost`` as soon as an event's cost is negative (the batch is
        then decided one by one)."""
        assert self.prepared is not None
        cumulative = dict(self.cumulative)
        sums: dict[tuple[int, int, int, int, int], list[Any]] = {}
        totals: dict[int, list[Any]] = {}  # id(shared) -> [quantity units, cost units, first event, shared]
        counted: dict[int, list[Any]] = {}  # counter -> [quantity units, first event, shared]
        expect = None if self.locked else self.expect
        start = self.start
        # The common case inline: one charge in integers (per unit, or graduated with the counter inside
        # a tier the event does not leave), the same tier as the counter's previous event of the batch.
        # Then the price is the tier's and the expectation only tightens the tier's upper end: kept per
        # counter (``highs``) and applied once when the counter leaves the run, not per event. Anything
        # else goes through _priced_units, which gives the same amounts (a hypothesis test compares them).
        runs: dict[int, tuple[int, int | None, int]] = {}  # counter -> the tier (lower, upper, price) of its run
        highs: dict[int, int] = {}  # counter -> the run's bound on its value at start, not yet applied
        scale = _QTY_SCALE
        for event, shared, charges in self.prepared.plans:
            fast = charges[0].fast if _FAST_SUMS and len(charges) == 1 else None
            counters: Iterable[int] = ()
            if fast is not None:
                qty = int(event.quantity.scaleb(scale))
                counter_id = charges[0].counter_id
                if counter_id is None:  # per unit
                    cost = -(-(qty * fast[0][2]) // _COST_DIVISOR)
                else:
                    before = cumulative[counter_id]
                    run = runs.get(counter_id)
                    inexact = 1
                    if run is not None and run[0] < before and (run[1] is None or before + qty <= run[1]):
                        # telescoping needs a whole number of ledger units (else the Decimal way)
                        cost, inexact = divmod(qty * run[2], _COST_DIVISOR)
                    if inexact:
                        fast = None
                    else:
                        if expect is not None and run is not None and run[1] is not None:
                            highs[counter_id] = run[1] - qty - (before - start[counter_id])
                        counters = (counter_id,)
            if fast is None:
                for charge in charges:
                    counter_id = charge.counter_id
                    if counter_id is not None:
                        runs.pop(counter_id, None)
                        high = highs.pop(counter_id, None)
                        if high is not None and expect is not None:
                            _narrow(expect, counter_id, expect[counter_id][0], high)
                # a one-charge event priced inside a tier starts its counter's run there
                qty, cost, counters = _priced_units(event, charges, cumulative, expect, start,
                                                    runs if _FAST_SUMS and len(charges) == 1 else None)
                if cost < 0 and shared.priced:
                    raise _NegativeCost
            for counter_id in counters:
                cumulative[counter_id] += qty
                count = counted.get(counter_id)
                if count is None:
                    count = counted[counter_id] = [0, event, shared]
                count[0] += qty
            total = totals.get(id(shared))
            if total is None:
                total = totals[id(shared)] = [0, 0, event, shared]
            total[0] += qty
            if shared.priced:
                total[1] += cost
        if expect is not None:
            for counter_id, high in highs.items():
                _narrow(expect, counter_id, expect[counter_id][0], high)
        for counter_id, (qty_total, first, shared) in counted.items():
            sums[(counter_id, _COUNTER, shared.unit_ledger, first.meter.pk, shared.period)] = [qty_total, first, shared]
        for qty_total, cost_total, first, shared in totals.values():
            meter_pk, period = first.meter.pk, shared.period
            if shared.hard is not None and qty_total:
                sums.setdefault((shared.quota_id, _QUOTA, shared.unit_ledger, meter_pk, period),
                                [0, first, shared])[0] += qty_total
            if shared.cap is not None and cost_total:
                sums.setdefault((shared.spend_id, _SPEND, shared.money_ledger, meter_pk, period),
                                [0, first, shared])[0] += cost_total
            if shared.prepaid and cost_total:
                sums.setdefault((shared.wallet_id, _CREDITS, shared.money_ledger, meter_pk, period),
                                [0, first, shared])[0] += cost_total
        return sums

    def _one_by_one(self, skip: set[Any]) -> dict[Any, Refusal]:
        assert self.prepared is not None
        available, cumulative = self.available, self.cumulative
        refused: dict[Any, tuple[str, int, str, str]] = {}  # key -> (leg, account id, unit, meter key)
        for event, shared, charges in self.prepared.plans:
            if event.key in skip:
                continue
            qty, cost_units, counters = _priced_units(event, charges, cumulative)
            if not shared.priced:
                cost_units = 0
            legs: list[tuple[str, int, int, int]] = []  # (leg, account, amount, code)
            if shared.hard is not None and qty:
                legs.append(("quota", shared.quota_id, qty, _QUOTA))
            if shared.cap is not None and cost_units:
                legs.append(("spend", shared.spend_id, cost_units, _SPEND))
            if shared.prepaid and cost_units:
                legs.append(("credits", shared.wallet_id, cost_units, _CREDITS))
            # a negative cost (a credit-back) always fits: only what an event takes can be refused
            short = next((leg for leg in legs if leg[2] > 0 and available[leg[1]] < leg[2]), None)
            if short is not None:
                unit = event.meter.unit if short[0] == "quota" else shared.currency
                refused[event.key] = (short[0], short[1], unit, event.meter.key)
                continue
            moves = []  # (account, code, ledger, meter, period, amount, terms)
            for _leg, account_id, amount, code in legs:
                available[account_id] -= amount
                ledger_id = shared.unit_ledger if code == _QUOTA else shared.money_ledger
                moves.append((account_id, code, ledger_id, event.meter.pk, shared.period, amount, shared))
            for counter_id in counters:
                cumulative[counter_id] += qty
                moves.append((counter_id, _COUNTER, shared.unit_ledger, event.meter.pk, shared.period, qty, shared))
            self.accepted.append((event, moves))
        return {key: _refusal(leg, meter_key, available[account_id], unit)
                for key, (leg, account_id, unit, meter_key) in refused.items()}

    def write(self, stored: Callable[[Any], bool] = lambda key: True,
              book: Callable[[list[Transfer], dict[int, tuple[int | None, int | None]] | None], None] | None = None
              ) -> None:
        """Book the accepted events for which ``stored(key)`` (the caller's insert took them): one transfer
        per (account, code, ledger, meter, period) from the account, by the batch's net. Events whose marginal
        cost is negative give money back (credit-backs): an account that the batch's events, in order, never
        took more of than the net (with credit-backs last, say) gets the net, from it, or to it with the
        refund code when negative; otherwise (a credit-back before more usage) two: the most the batch's
        events had taken of it at any point (its peak), and the refund of the peak less the net. Every
        booking checks each account's debits against its credits before the booking's own credits, so it then
        checks exactly what the decisions assumed: the account can take the peak (a net would not say so).
        An accepted event that was not stored (another request stored its id first) is left out: its share
        of the limit stays free. ``book(transfers, expect)`` books them (the ledger's ``book_checked`` unless
        the caller books them together with its insert, in one statement), possibly none."""
        batch = self.sums  # no credit-backs: the net is the peak
        if batch is None:
            batch = {}
            for event, moves in self.accepted:
                if not stored(event.key):
                    continue
                for account_id, code, ledger_id, meter_pk, period, amount, shared in moves:
                    entry = batch.setdefault((account_id, code, ledger_id, meter_pk, period), [0, event, shared, 0])
                    entry[0] += amount
                    if entry[0] > entry[3]:
                        entry[3] = entry[0]
        transfers = []
        for (account_id, code, ledger_id, meter_pk, period), (net, first, terms, *peak) in batch.items():
            taken = max(peak[0] if peak else net, net, 0)
            if not (taken or net):
                continue
            other = terms.consumed_id if code == _CREDITS else acc.operator_account(OPERATOR_OF[code], ledger_id).id
            customer_pk, common = first.customer_pk, {"ledger": ledger_id, "user_data_128": first.customer_pk,
                                                      "user_data_64": meter_pk, "user_data_32": period}
            if taken:
                transfers.append(Transfer(id=derive("usage-batch", code, account_id, customer_pk, first.event_id),
                                          debit_account_id=account_id, credit_account_id=other, amount=taken, code=code,
                                          **common))
            if taken > net:
                refund = REFUND_OF[code]
                transfers.append(Transfer(id=derive("usage-batch", refund, account_id, customer_pk, first.event_id),
                                          debit_account_id=other, credit_account_id=account_id, amount=taken - net,
                                          code=refund, **common))
        # One statement. Under the locks it cannot be refused (if it were, the whole batch, events included,
        # would roll back rather than be guessed at: LedgerRefused, a 500); without them, it is refused when
        # the accounts moved in a way that changes a decision, and the caller decides again under locks.
        expect: dict[int, tuple[int | None, int | None]] | None = None
        if not self.locked and transfers:
            moved = {t.debit_account_id for t in transfers}
            expect = ({i: (low, high) for i, (low, high) in self.expect.items() if i in moved} if self.sums is not None
                      else {i: (value, value) for i, value in self.start.items() if i in moved})
        (book or self.ledger.book_checked)(transfers, expect)


_ZERO = Decimal(0)


class _NegativeCost(Exception):
    """BatchDebit._sums met an event whose marginal cost is negative: decide the batch one by one."""


def _priced(event: EventUsage, charges: list[_Charge], cumulative: dict[int, int]) -> tuple[int, Decimal, list[int]]:
    """The event's quantity in ledger units, its ledger cost after the counters' ``cumulative`` usage (a
    Decimal, exact at the ledger scale; negative when the event takes the period into a cheaper volume
    tier), and the counters it moves (the caller advances them if the event is taken).

    The rounding rule (docs/ledger.md, "Rounding"): each charge with a usage counter telescopes
    (``_Charge.ledger_units``: ``ceil(F(after)) - ceil(F(before))``); the linear charges' exact cost (per
    unit: no running total) is summed and rounded up once per event."""
    quantity = event.quantity
    linear = _ZERO
    units = 0
    counters: list[int] = []
    for charge in charges:
        counter_id = charge.counter_id
        if counter_id is None:
            linear += charge.marginal(_ZERO, quantity)
        else:
            units += charge.ledger_units(cumulative[counter_id], quantity)
            counters.append(counter_id)
    if linear:
        units += _ceil(_EXACT.scaleb(linear, LEDGER_SCALE))
    return acc.qty_units(quantity), acc.units_to_money(units), counters


def _ceil(scaled: Decimal) -> int:
    """An amount already scaled to ledger units, rounded up to a whole unit (exact)."""
    return int(scaled.to_integral_value(rounding=ROUND_CEILING))


# Integer pricing for the common terms: a price with at most _PRICE_SCALE decimals is an integer of price
# units, a quantity one of quantity units (10^-18), so an event's exact cost is an integer of 10^-(18 +
# _PRICE_SCALE) and its ledger amount (10^-12, rounded up) one ceiling division away. It gives exactly what
# the Decimal path gives (a hypothesis test pins it) at a fraction of its cost, per event of every batch.
_PRICE_SCALE = 24
_QTY_SCALE = acc.QTY_SCALE
_FAST_SUMS = True  # BatchDebit._sums' inline path for one integer charge (off: every event via _priced_units)
_COST_DIVISOR = 10 ** (acc.QTY_SCALE + _PRICE_SCALE - LEDGER_SCALE)
_EXACT = DecimalContext(prec=80)


def _fast_terms(spec: pricing.ChargeSpec) -> tuple[tuple[int, int | None, int], ...] | None:
    """Tiers (lower, upper, price) in integer units for a per_unit or graduated charge whose prices and
    bounds are exact in them; None for any other terms (priced the Decimal way)."""
    def units(value: Decimal, scale: int) -> int | None:
        scaled = _EXACT.scaleb(value, scale)
        return int(scaled) if scaled == scaled.to_integral_value() else None

    if spec.model == "per_unit":
        price = units(spec.unit_price, _PRICE_SCALE)
        return None if price is None else ((0, None, price),)
    if spec.model != "graduated" or not spec.tiers:
        return None
    tiers: list[tuple[int, int | None, int]] = []
    lower = 0
    for tier in spec.tiers:
        price = units(tier.unit_price, _PRICE_SCALE)
        upper = None if tier.up_to is None else units(tier.up_to, acc.QTY_SCALE)
        if price is None or (tier.up_to is not None and upper is None):
            return None
        tiers.append((lower, upper, price))
        if upper is None:
            break
        lower = upper
    return tuple(tiers)


def _priced_units(event: EventUsage, charges: list[_Charge], cumulative: dict[int, int],
                  expect: dict[int, list[Any]] | None = None, start: dict[int, int] | None = None,
                  tiers_used: dict[int, tuple[int, int | None, int]] | None = None) -> tuple[int, int, list[int]]:
    """``_priced`` with the cost as ledger money units: in integers when every charge allows it (per unit;
    graduated with the period's usage already inside a tier the event does not leave, and the event's cost
    in it a whole number of ledger units, so that it telescopes whatever the counter's value), else the
    Decimal way. With ``expect``, narrows each usage counter's [low, high] to the values
    it may have had at ``start`` for this price to stay the same: inside the same tier, or, priced the
    Decimal way, exactly the value read. ``tiers_used``: counter -> the tier (lower, upper, price) an
    integer-priced counter was priced in."""
    qty = acc.qty_units(event.quantity)
    num = 0
    counters: list[int] = []
    for charge in charges:
        tiers = charge.fast
        if tiers is None:
            break
        counter_id = charge.counter_id
        if counter_id is None:  # per unit
            num += qty * tiers[0][2]
            continue
        before = cumulative[counter_id]
        for lower, upper, price in tiers:  # pricing.marginal's own shortcut, in integers
            if upper is None or before <= upper:
                if before > lower and (upper is None or before + qty <= upper) and not qty * price % _COST_DIVISOR:
                    num += qty * price
                    counters.append(counter_id)
                    if tiers_used is not None:
                        tiers_used[counter_id] = (lower, upper, price)
                    if expect is not None and start is not None:
                        shift = before - start[counter_id]  # what this batch counted before the event
                        _narrow(expect, counter_id, lower + 1 - shift, None if upper is None else upper - qty - shift)
                    tiers = ()
                break
        if tiers:
            break
    else:
        return qty, -(-num // _COST_DIVISOR), counters
    qty, cost, counters = _priced(event, charges, cumulative)
    if expect is not None and start is not None:
        for counter_id in counters:
            _narrow(expect, counter_id, start[counter_id], start[counter_id])
    return qty, int(_EXACT.scaleb(cost, LEDGER_SCALE)), counters


def _narrow(expect: dict[int, list[Any]], counter_id: int, low: int, high: int | None) -> None:
    bounds = expect.get(counter_id)
    if bounds is None:
        expect[counter_id] = [low, high]
        return
    bounds[0] = max(bounds[0], low)
    if high is not None:
        bounds[1] = high if bounds[1] is None else min(bounds[1], high)


_QUOTA, _SPEND, _CREDITS, _COUNTER = (int(TransferCode.USAGE_QUOTA), int(TransferCode.USAGE_SPEND),
                                      int(TransferCode.USAGE_CREDITS), int(TransferCode.USAGE_COUNTER))
# The operator account on the other side of each usage code (credits: the customer's credits-consumed account)
OPERATOR_OF = {int(TransferCode.USAGE_QUOTA): AccountCode.OPERATOR_QUOTA,
               int(TransferCode.USAGE_SPEND): AccountCode.OPERATOR_SPEND,
               int(TransferCode.USAGE_COUNTER): AccountCode.OPERATOR_COUNTER}
# A batch whose net on a money account is negative gives it back with the refund code
REFUND_OF = {int(TransferCode.USAGE_SPEND): int(TransferCode.USAGE_SPEND_REFUND),
             int(TransferCode.USAGE_CREDITS): int(TransferCode.USAGE_CREDITS_REFUND)}


def _refusal(leg: str, meter_key: str, available: int, unit: str) -> Refusal:
    """The 402 body of a refused leg: what is left on its account (after the batch)."""
    available = max(available, 0)
    remaining = acc.units_to_qty(available) if leg == "quota" else acc.units_to_money(available)
    return Refusal(CODES[leg], MESSAGES[leg].format(meter=meter_key),
                   Decimal(format(remaining.normalize(), "f")) if remaining else Decimal(0), unit)


# _Terms of recent batches, reused by later ones: they depend only on the key (a version's definition is
# never edited; ids derive from stable keys) and keep their charges by dimensions, so a customer's next
# batch neither derives ids nor parses charges again. Bounded: emptied when full.
_SHARED: dict[tuple[Any, ...], tuple[_Terms | None, list[Account], list[Transfer]]] = {}
_SHARED_MAX = 10_000
_CHARGES_MAX = 1_000  # sets of dimensions whose charges one _Terms keeps (a dimension may be an id)


def _shared_terms(event: EventUsage, sub: Sub, version: Version, period: int,
                  wallet_ids: dict[tuple[int, str], int], wallets: set[int], accounts: list[Account],
                  allocations: list[Transfer]) -> _Terms | None:
    """``_terms_of``, from _SHARED when a batch has worked it out before in this process."""
    prepaid = wallet_ids[(event.customer_pk, sub.currency)] in wallets
    key = (event.customer_pk, event.meter.pk, period, version.pk, id(version.definition), sub.currency, prepaid)
    found = _SHARED.get(key)
    if found is None:
        needs: list[Account] = []
        allocated: list[Transfer] = []
        found = (_terms_of(event, sub, version, period, wallet_ids, wallets, needs, allocated), needs, allocated)
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        _SHARED[key] = found
    accounts += found[1]
    allocations += found[2]
    return found[0]


def _terms_of(event: EventUsage, sub: Sub, version: Version, period: int,
              wallet_ids: dict[tuple[int, str], int], wallets: set[int], accounts: list[Account],
              allocations: list[Transfer]) -> _Terms | None:
    """The shared terms of the event's (customer, plan version, meter, period), or None when nothing limits
    it; the accounts and period allocations it needs are appended (in first-seen order)."""
    definition = version.definition
    currency = sub.currency
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
        shared.consumed_id = ids.consumed(currency, period)
        accounts.append(acc.consumed_account(customer_pk, currency, period))
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
    linear = Decimal(0)
    cost_units = 0  # the event's ledger cost (_priced's rounding rule)
    legs: list[tuple[int, int, int, int, int, TransferCode]] = []  # id, debit, credit, amount, ledger, code
    if shared.priced:
        unit = shared.unit_ledger
        for charge in charges:
            if charge.counter_id is None:
                linear += charge.marginal(Decimal(0), event.quantity)
                continue
            counter_id = charge.counter_id
            cost_units += charge.ledger_units(cumulative.get(counter_id, 0), event.quantity)
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
    if linear:
        cost_units += _ceil(_EXACT.scaleb(linear, LEDGER_SCALE))
    if event.coverage and cost_units > 0:
        cost_units -= acc.money_units_ceil(event.coverage.take_cost(acc.units_to_money(cost_units)))
    money = shared.money_ledger
    # A negative cost (the event takes the period into a cheaper volume tier) debits nothing: the same legs
    # (same ids: an event has one spend and one credits leg, whichever way) give it back to the customer.
    if shared.cap is not None and cost_units > 0:
        legs.append((shared.spend_transfer_id(event.event_id), shared.spend_id,
                     acc.operator_account(AccountCode.OPERATOR_SPEND, money).id, cost_units, money,
                     TransferCode.USAGE_SPEND))
        chain.legs.append("spend")
        chain.accounts["spend"] = (shared.spend_id, shared.currency)
    elif shared.cap is not None and cost_units < 0:
        legs.append((shared.spend_transfer_id(event.event_id), acc.operator_account(AccountCode.OPERATOR_SPEND, money).id,
                     shared.spend_id, -cost_units, money, TransferCode.USAGE_SPEND_REFUND))
        chain.legs.append("spend_refund")
    if shared.prepaid and cost_units > 0:
        legs.append((shared.credits_transfer_id(event.event_id), shared.wallet_id, shared.consumed_id, cost_units, money,
                     TransferCode.USAGE_CREDITS))
        chain.legs.append("credits")
        chain.accounts["credits"] = (shared.wallet_id, shared.currency)
    elif shared.prepaid and cost_units < 0:
        legs.append((shared.credits_transfer_id(event.event_id), shared.consumed_id, shared.wallet_id, -cost_units,
                     money, TransferCode.USAGE_CREDITS_REFUND))
        chain.legs.append("credits_refund")
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
        out[key] = _refusal(leg, chain.event.meter.key, account.available if account else 0, unit)
    return out
