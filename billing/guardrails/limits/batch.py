"""Limits for a whole batch decided in Python (``BatchDebit``) and written as one transfer per account."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Container, Iterable
from typing import Any

from billing.guardrails import accounts as acc
from billing.guardrails.limits.charges import COST_DIVISOR, QTY_SCALE, NegativeCost, narrow, priced_units
from billing.guardrails.limits.events import (
    COUNTER,
    CREDITS,
    EACH,
    OPERATOR_OF,
    QUOTA,
    REFUND_OF,
    SPEND,
    TOTAL,
    UNIQUE,
    EventUsage,
    Refusal,
    refusal,
)
from billing.guardrails.limits.plans import LimitTerms, prepare
from billing.guardrails.limits.subscribed import SubscribedPlans
from ledger.backends import get_ledger
from ledger.backends.base import LedgerRefused
from ledger.ids import derive
from ledger.types import Transfer

FAST_SUMS = True  # BatchDebit._sums' inline path for one integer charge (off: every event via priced_units)


class InFlight(LedgerRefused):
    """A unique_count value of the batch is being counted by a booking still in flight (held, not yet
    posted): whether it is counted is not known yet. Decide the batch again (nothing was booked)."""


def _legs(counted: dict[int, list[Any]], totals: dict[int, list[Any]]) -> dict[tuple[int, int, int, int, int], list[Any]]:
    """``BatchDebit._sums``' totals as amounts per (account, code, ledger, meter, period): each counter's
    quantity, and each limit's quantity or cost (quota, spend cap, credits), with its first event and terms."""
    sums: dict[tuple[int, int, int, int, int], list[Any]] = {}
    for counter_id, (qty_total, first, shared) in counted.items():
        sums[(counter_id, COUNTER, shared.unit_ledger, first.meter.pk, shared.period)] = [qty_total, first, shared]
    for qty_total, cost_total, first, shared in totals.values():
        meter_pk, period = first.meter.pk, shared.period
        if shared.hard is not None and qty_total:
            sums.setdefault((shared.quota_id, QUOTA, shared.unit_ledger, meter_pk, period),
                            [0, first, shared])[0] += qty_total
        if shared.cap is not None and cost_total:
            sums.setdefault((shared.spend_id, SPEND, shared.money_ledger, meter_pk, period),
                            [0, first, shared])[0] += cost_total
        if shared.prepaid and cost_total:
            sums.setdefault((shared.wallet_id, CREDITS, shared.money_ledger, meter_pk, period),
                            [0, first, shared])[0] += cost_total
    return sums


class BatchDebit:
    """The limits' one engine: decisions for a batch of events (in order; an event is accepted only if every
    leg fits: quota, spend cap, credits; marginal prices from the period's usage counters), taken in
    Python on the accounts as read (see below), and written as one transfer per (account, code, meter,
    period) for the whole batch instead of one per event and leg: a 1,000-event batch writes a handful of
    ledger rows, not 3,000. Exactly once comes from the event table: only events the caller's ``INSERT
    ... ON CONFLICT DO NOTHING`` inserted with the booking are debited (billing.usage.ingest.debit). Each
    batch transfer's id derives from its first event's id (docs/ledger.md).

    Construction reads the accounts (call it inside ``transaction.atomic()``), locked until the caller's
    transaction ends, or with ``lock=False`` not locked: then the decisions hold only if the accounts are
    still as read when the batch is booked, which ``write`` states to the ledger (``book_checked``: the
    bounded accounts must still hold the batch, each usage counter must still be in the tier the events
    were priced in); if they are not, the ledger refuses (``LedgerRefused``) and the caller runs the batch
    again with locks. ``decide`` takes the decisions; ``write`` books the accepted events that were
    stored."""

    def __init__(self, events: list[EventUsage], subscribed: SubscribedPlans | None = None, *, lock: bool = True,
                 fold: bool = False, peek: bool = False) -> None:
        events = [e for e in events if e.quantity > 0]
        # (account, code, ledger, meter, period) -> [amount, first event, terms]; per accepted event when
        # some events may not be stored (the careful pass), else the batch's sums
        self.accepted: list[tuple[EventUsage, list[tuple[int, int, int, int, int, int, LimitTerms]]]] = []
        self.sums: dict[tuple[int, int, int, int, int], list[Any]] | None = None
        self.locked = lock
        self.expect: dict[int, list[Any]] = {}  # counter -> [low, high] its value may have when booked
        self.ledger = get_ledger()
        # ``peek``: the caller decides again under locks when this refuses, so the read may still count holds
        # that expired (LedgerBackend.peek_accounts: the SQL ledger's read without its expiry sweep)
        read = self.ledger.lock_accounts if lock else self.ledger.peek_accounts if peek else self.ledger.lookup_accounts
        # Which credit wallets exist is first taken from what this process has seen (a wallet is never
        # deleted), and checked by the lock itself: the candidate wallets are locked with the accounts
        # (one statement). Only a wallet this process had not seen yet makes the work be done again.
        # With ``fold`` (unlocked, the caller books with ``book_with``), the accounts this process has not
        # seen are read with the others instead of being created first: those absent are created by the
        # booking, with their allocations (``self.fold``), and decided on as fresh.
        create = not (fold and not lock)
        prepared = prepare(events, subscribed, wallets=acc.known_wallets, create=create) if events else None
        self.prepared = None
        self.fold: acc.Fold | None = None
        if prepared is None:
            return
        unseen = acc.unknown(prepared.accounts)
        unseen_t = acc.unknown_allocations(prepared.allocations)  # before the read: else not seen by it
        if peek and prepared.values:
            # a unique_count value this process's last batch holds would read as in flight until posted
            read = self.ledger.lookup_accounts  # which waits for this process's posts (TigerBeetle)
        locked = read(sorted(prepared.locks() | set(prepared.wallet_ids) | {a.id for a in unseen}))
        found = {i for i in prepared.wallet_ids if i in locked}
        if found != prepared.wallets:
            acc.remember_wallets(found)
            prepared = prepare(events, subscribed, wallets=lambda ids: found, create=create)
            assert prepared is not None
            unseen = acc.unknown(prepared.accounts)
            unseen_t |= acc.unknown_allocations(prepared.allocations)
            missing = (prepared.locks() | {a.id for a in unseen}) - locked.keys()
            if missing:  # accounts just created for the wallet's prepaid pricing (usage counters)
                locked.update(read(sorted(missing)))
        if not prepared.plans:
            return
        if not create:
            self.fold = acc.fold(unseen, prepared.allocations, unseen_t, locked)
            if self.fold.changed:  # allocations of accounts that existed, created or adjusted after the read
                locked.update(read(sorted(self.fold.changed)))
            locked.update(self.fold.state)
        self.prepared = prepared
        bounded = prepared.bounded()
        self.available = {i: locked[i].available for i in bounded}
        # a usage counter's value with what is held on it: the held batches of a ledger that posts them after
        # the insert (TigerBeetle; peeked at, not waited for), which are posted unless their insert failed
        # (none on the SQL ledger, which books usage posted: a reservation holds no counter)
        self.cumulative = {i: locked[i].debits_posted + locked[i].debits_pending for i in prepared.counters}
        self.start = dict(self.cumulative)
        # a unique_count value is counted once its account's one unit is posted; one only held (a booking
        # in flight) is taken as not counted: booking it again is refused by its bound, and decided again
        self.counted = {i for i in prepared.values if i in locked and locked[i].debits_posted}
        self.in_flight = {i for i in prepared.values if i in locked and i not in self.counted
                          and locked[i].debits_pending}
        # what the unlocked read saw held on the bounded accounts: holds of bookings in flight, which are
        # voided when their insert fails (a deadlock, run again), so a new unique_count value refused only
        # for want of room those holds take is decided again, not refused (a value once refused for room
        # that a voided hold then left could be counted by the next batch: two answers for one value)
        self.held = {} if lock else {i: locked[i].debits_pending for i in bounded if i in locked}
        # runs past their max_duration_seconds (from their steps account's creation: the run's first event)
        now_ns = time.time_ns()
        self.expired = {g.name for event, _, _ in prepared.plans for g in event.guards
                        if g.seconds and g.account_id in locked
                        and now_ns - locked[g.account_id].timestamp > g.seconds * 1_000_000_000}
        # the batch's sums are for totals only: a reservation's coverage, or a limit on each event or on
        # distinct values, is decided event by event
        self.summable = not self.expired and all(e.coverage is None for e in events) and all(
            shared.hard is None or shared.kind == TOTAL for shared, _ in prepared.terms.values())

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
        if skip is None and self.summable:
            try:
                sums: dict[tuple[int, int, int, int, int], list[Any]] | None = self._sums()
            except NegativeCost:
                sums = None
            if sums is not None:
                needed: dict[int, int] = defaultdict(int)
                for (account_id, code, *_), (amount, *_rest) in sums.items():
                    if code != COUNTER:
                        needed[account_id] += amount
                if all(amount <= self.available[account_id] for account_id, amount in needed.items()):
                    self.sums = sums
                    return {}
        return self._one_by_one(skip or set())

    def _sums(self) -> dict[tuple[int, int, int, int, int], list[Any]]:
        """The batch's amounts per (account, code, ledger, meter, period), each with its first event and its
        terms, all events accepted; ``NegativeCost`` as soon as an event's cost is negative (the batch is
        then decided one by one)."""
        assert self.prepared is not None
        cumulative = dict(self.cumulative)
        totals: dict[int, list[Any]] = {}  # id(shared) -> [quantity units, cost units, first event, shared]
        counted: dict[int, list[Any]] = {}  # counter -> [quantity units, first event, shared]
        expect = None if self.locked else self.expect
        start = self.start
        # The common case inline: one charge in integers (per unit, or graduated with the counter inside
        # a tier the event does not leave), the same tier as the counter's previous event of the batch.
        # Then the price is the tier's and the expectation only tightens the tier's upper end: kept per
        # counter (``highs``) and applied once when the counter leaves the run, not per event. Anything
        # else goes through priced_units, which gives the same amounts (a hypothesis test compares them).
        # per distinct guards tuple (events of one run and budget scope share one): [guards, events, their
        # cost, first event, its terms]; turned into amounts per account once, after the loop (``_guard_legs``)
        guarded: dict[int, list[Any]] = {}
        runs: dict[int, tuple[int, int | None, int]] = {}  # counter -> the tier (lower, upper, price) of its run
        highs: dict[int, int] = {}  # counter -> the run's bound on its value at start, not yet applied
        scale = QTY_SCALE
        for event, shared, charges in self.prepared.plans:
            fast = charges[0].fast if FAST_SUMS and len(charges) == 1 else None
            counters: Iterable[int] = ()
            if fast is not None:
                qty = int(event.quantity.scaleb(scale))
                counter_id = charges[0].counter_id
                if counter_id is None:  # per unit
                    cost = -(-(qty * fast[0][2]) // COST_DIVISOR)
                else:
                    before = cumulative[counter_id]
                    run = runs.get(counter_id)
                    inexact = 1
                    if run is not None and run[0] < before and (run[1] is None or before + qty <= run[1]):
                        # telescoping needs a whole number of ledger units (else the Decimal way)
                        cost, inexact = divmod(qty * run[2], COST_DIVISOR)
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
                            narrow(expect, counter_id, expect[counter_id][0], high)
                # a one-charge event priced inside a tier starts its counter's run there
                qty, cost, counters = priced_units(event, charges, cumulative, expect, start,
                                                    runs if FAST_SUMS and len(charges) == 1 else None)
                if cost < 0 and shared.priced:
                    raise NegativeCost
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
            if event.guards:
                _group_guards(guarded, event, shared, cost)
        if expect is not None:
            for counter_id, high in highs.items():
                narrow(expect, counter_id, expect[counter_id][0], high)
        sums = _legs(counted, totals)
        sums.update(_guard_legs(guarded))
        return sums

    def _one_by_one(self, skip: set[Any]) -> dict[Any, Refusal]:
        assert self.prepared is not None
        available, cumulative, counted = self.available, self.cumulative, self.counted
        refused: dict[Any, tuple[str, int | None, int, str, str]] = {}  # key -> (leg, account, left, unit, meter)
        for event, shared, charges in self.prepared.plans:
            if event.key in skip:
                continue
            qty, cost_units, counters = priced_units(event, charges, cumulative)
            if not shared.priced:
                cost_units = 0
            # (leg, account, amount, code, ledger, period, name): the run's and the budgets' first, then the
            # limits' (the narrowest scope answers first: docs/guardrails.md)
            legs: list[tuple[str, int, int, int, int, int, str]] = []
            over = next((g for g in event.guards if g.seconds and g.name in self.expired), None)
            if over is not None:
                refused[event.key] = ("run_duration", None, 0, "", over.name)
                continue
            for g in event.guards:
                amount = 1 if g.per_step else cost_units
                if g.code and amount:
                    legs.append((g.leg, g.account_id, amount, g.code, g.ledger, g.period, g.name))
            unit_ledger, money_ledger, period, meter_key = (shared.unit_ledger, shared.money_ledger, shared.period,
                                                            event.meter.key)
            value_id = None
            if shared.hard is not None:
                if shared.kind == EACH:
                    hard = acc.qty_units(shared.hard)
                    if qty > hard:
                        refused[event.key] = ("quota", None, hard, event.meter.unit, event.meter.key)
                        continue
                elif shared.kind == TOTAL:
                    quota = qty
                    if event.coverage is not None:  # what the reservation's posted hold already took
                        event.covered_quantity = event.coverage.take_quantity(event.quantity)
                        quota -= acc.qty_units(event.covered_quantity)
                    if quota:
                        legs.append(("quota", shared.quota_id, quota, QUOTA, unit_ledger, period, meter_key))
                else:
                    value = shared.unique_value(event)
                    value_id = shared.unique_id(value) if value is not None else None
                    if value_id in self.in_flight:
                        raise InFlight(f"a value of meter {event.meter.key} is being counted")
                    if value_id is not None and value_id not in counted:
                        legs.append(("quota", shared.quota_id, acc.ONE, QUOTA, unit_ledger, period, meter_key))
                    else:
                        value_id = None  # counted before: passes
            if shared.cap is not None and cost_units:
                legs.append(("spend", shared.spend_id, cost_units, SPEND, money_ledger, period, meter_key))
            if shared.prepaid and cost_units:
                legs.append(("credits", shared.wallet_id, cost_units, CREDITS, money_ledger, period, meter_key))
            # a negative cost (a credit-back) always fits: only what an event takes can be refused
            short = next((leg for leg in legs if leg[2] > 0 and available[leg[1]] < leg[2]), None)
            if short is not None:
                if value_id is not None and short[0] == "quota" and \
                        available[short[1]] + self.held.get(short[1], 0) >= short[2]:
                    raise InFlight(f"the distinct values of meter {event.meter.key} are being counted")
                unit = event.meter.unit if short[0] == "quota" else shared.currency
                refused[event.key] = (short[0], short[1], 0, unit, short[6])
                continue
            moves = []  # (account, code, ledger, meter, period, amount, terms)
            for _leg, account_id, amount, code, ledger_id, leg_period, _name in legs:
                available[account_id] -= amount
                moves.append((account_id, code, ledger_id, event.meter.pk, leg_period, amount, shared))
            if value_id is not None:
                counted.add(value_id)
                moves.append((value_id, UNIQUE, shared.unit_ledger, event.meter.pk, shared.period, acc.ONE, shared))
            for counter_id in counters:
                cumulative[counter_id] += qty
                moves.append((counter_id, COUNTER, shared.unit_ledger, event.meter.pk, shared.period, qty, shared))
            self.accepted.append((event, moves))
        return {key: refusal(leg, meter_key, left if account_id is None else available[account_id], unit)
                for key, (leg, account_id, left, unit, meter_key) in refused.items()}

    def write(self, stored: Container[Any] | None = None) -> None:
        """Book ``booking(stored)`` in the caller's open transaction (the ledger's ``book_checked``)."""
        self.ledger.book_checked(*self.booking(stored))

    def booking(self, stored: Container[Any] | None = None
                ) -> tuple[list[Transfer], dict[int, tuple[int | None, int | None]] | None]:
        """The transfers that book the accepted events whose key is in ``stored`` (all when None: the caller's
        insert took them), and what the decisions assumed of the accounts (``expect``, for the ledger's
        ``book_checked``/``book_with``; None under the locks). One transfer
        per (account, code, ledger, meter, period) from the account, by the batch's net. Events whose marginal
        cost is negative give money back (credit-backs): an account that the batch's events, in order, never
        took more of than the net (with credit-backs last, say) gets the net, from it, or to it with the
        refund code when negative; otherwise (a credit-back before more usage) two: the most the batch's
        events had taken of it at any point (its peak), and the refund of the peak less the net. Every
        booking checks each account's debits against its credits before the booking's own credits, so it then
        checks exactly what the decisions assumed: the account can take the peak (a net would not say so).
        An accepted event that was not stored (another request stored its id first) is left out: its share
        of the limit stays free. Possibly none."""
        batch = self.sums  # no credit-backs: the net is the peak
        if batch is None:
            batch = {}
            for event, moves in self.accepted:
                if stored is not None and event.key not in stored:
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
            other = terms.consumed_id if code == CREDITS else acc.operator_account(OPERATOR_OF[code], ledger_id).id
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
        return transfers, expect


def _group_guards(groups: dict[int, list[Any]], event: EventUsage, shared: Any, cost: int) -> None:
    """Count an event with its guards' group (``_sums``): one more step, and its cost."""
    group = groups.get(id(event.guards))
    if group is None:
        groups[id(event.guards)] = [event.guards, 1, cost, event, shared]
    else:
        group[1] += 1
        group[2] += cost


def _guard_legs(groups: dict[int, list[Any]]) -> dict[tuple[int, int, int, int, int], list[Any]]:
    """The batch's run and budget amounts per account, from its events grouped by their guards (first seen
    first): one step per event, or their cost, each account with the first event that moved it and its
    terms (the first group holding the account has the batch's earliest such event)."""
    legs: dict[int, tuple[tuple[int, int, int, int, int], list[Any]]] = {}
    for guards, count, cost, first, shared in groups.values():
        for g in guards:
            amount = count if g.per_step else cost
            if g.code and amount:
                found = legs.get(g.account_id)
                if found is None:
                    legs[g.account_id] = ((g.account_id, g.code, g.ledger, first.meter.pk, g.period), [amount, first, shared])
                else:
                    found[1][0] += amount
    return dict(legs.values())
