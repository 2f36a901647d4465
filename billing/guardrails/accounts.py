"""Tollgate's accounts in the ledger (docs/ledger.md): which account holds what, their deterministic
ids, and creating them (idempotently) with their period allocations."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Container
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from django.db import transaction

from billing.catalog.money import LEDGER_SCALE
from billing.common import process_caches
from ledger.backends import get_ledger
from ledger.codes import RUN_LEDGER, AccountCode, TransferCode, currency_ledger, unit_ledger
from ledger.ids import derive, namespace
from ledger.types import Account, AccountFlags, Status, Transfer

QTY_SCALE = 18  # quantities in unit ledgers: 10^-18 of a unit, as exact as an event's quantity
BOUNDED = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY


ONE = 10 ** QTY_SCALE  # one unit of a unit ledger (a unique_count value counts one)


def qty_units(quantity: Decimal) -> int:
    return int(quantity.scaleb(QTY_SCALE))


def money_units_ceil(amount: Decimal) -> int:
    """Money held at the ledger scale, rounded up: a hold is never smaller than the priced cost."""
    return int(amount.scaleb(LEDGER_SCALE).to_integral_value(rounding=ROUND_CEILING))


def units_to_qty(units: int) -> Decimal:
    return Decimal(units).scaleb(-QTY_SCALE)


def units_to_money(units: int) -> Decimal:
    return Decimal(units).scaleb(-LEDGER_SCALE)


@dataclass(frozen=True)
class Ids:
    """Every account id of one customer, derived from stable keys."""

    customer_pk: int

    def wallet(self, currency: str) -> int:
        return derive("wallet", self.customer_pk, currency)

    def quota(self, meter_pk: int, period: int) -> int:
        return derive("quota", self.customer_pk, meter_pk, period)

    def spend(self, currency: str, period: int) -> int:
        return derive("spend", self.customer_pk, currency, period)

    def counter(self, meter_pk: int, charge_key: str, period: int) -> int:
        return derive("counter", self.customer_pk, meter_pk, charge_key, period)

    def unique(self, meter_pk: int, period: int, value: str) -> int:
        """One value of a unique_count meter's dimension in a period: counted at most once."""
        return derive("unique-value", self.customer_pk, meter_pk, period, value)

    def run_steps(self, run_id: str) -> int:
        return derive("run-steps", self.customer_pk, run_id)

    def run_spend(self, currency: str, run_id: str) -> int:
        return derive("run-spend", self.customer_pk, currency, run_id)

    def budget(self, budget_pk: int, period: int) -> int:
        return derive("budget", self.customer_pk, budget_pk, period)

    def spend_watch(self, currency: str) -> int:
        return derive("spend-watch", self.customer_pk, currency)

    def consumed(self, currency: str, period: int) -> int:
        """The period's credits-consumed account: the other side of every credits leg of its usage."""
        return derive("credits-consumed", self.customer_pk, currency, period)


def operator_account(code: AccountCode, ledger: int) -> Account:
    return _operator_account(code, ledger, namespace())


@functools.lru_cache(maxsize=4096)
def _operator_account(code: AccountCode, ledger: int, ns: str) -> Account:
    return Account(id=derive("operator", int(code), ledger), ledger=ledger, code=int(code))


process_caches.register_clearer("billing.guardrails.accounts._operator_account", _operator_account.cache_clear)


def wallet_account(customer_pk: int, currency: str) -> Account:
    return Account(id=Ids(customer_pk).wallet(currency), ledger=currency_ledger(currency),
                   code=AccountCode.CREDIT_WALLET, flags=BOUNDED, user_data_128=customer_pk)


def quota_account(customer_pk: int, meter_pk: int, period: int) -> Account:
    return Account(id=Ids(customer_pk).quota(meter_pk, period), ledger=unit_ledger(meter_pk), code=AccountCode.QUOTA,
                   flags=BOUNDED, user_data_128=customer_pk, user_data_64=meter_pk, user_data_32=period)


def spend_account(customer_pk: int, currency: str, period: int) -> Account:
    return Account(id=Ids(customer_pk).spend(currency, period), ledger=currency_ledger(currency),
                   code=AccountCode.SPEND_CAP, flags=BOUNDED, user_data_128=customer_pk, user_data_32=period)


def counter_account(customer_pk: int, meter_pk: int, charge_key: str, period: int) -> Account:
    return Account(id=Ids(customer_pk).counter(meter_pk, charge_key, period), ledger=unit_ledger(meter_pk),
                   code=AccountCode.USAGE_COUNTER, user_data_128=customer_pk, user_data_64=meter_pk, user_data_32=period)


def consumed_account(customer_pk: int, currency: str, period: int) -> Account:
    """Prepaid credits the period's usage consumed: credited by usage (and by reservation holds while they
    are pending), debited by credit-backs; its net balance (credits - debits posted) is what an invoice
    deducts. Unbounded: a credit-back is never refused."""
    return Account(id=Ids(customer_pk).consumed(currency, period), ledger=currency_ledger(currency),
                   code=AccountCode.CREDITS_CONSUMED, user_data_128=customer_pk, user_data_32=period)


# What an account that only counts is allocated (a run without that breaker, an alert-only budget): every
# such account is bounded all the same, so that a breaker set or a budget made blocking later only changes
# its allocation (``follow``), never its flags.
UNLIMITED = 2 ** 100


def run_steps_account(customer_pk: int, run_id: str) -> Account:
    """One agent run's steps: debited one unit per accepted event, allocated max_steps (or ``UNLIMITED``)."""
    return Account(id=Ids(customer_pk).run_steps(run_id), ledger=RUN_LEDGER, code=AccountCode.RUN_STEPS,
                   flags=BOUNDED, user_data_128=customer_pk)


def run_spend_account(customer_pk: int, currency: str, run_id: str) -> Account:
    return Account(id=Ids(customer_pk).run_spend(currency, run_id), ledger=currency_ledger(currency),
                   code=AccountCode.RUN_SPEND, flags=BOUNDED, user_data_128=customer_pk)


def budget_account(customer_pk: int, budget_pk: int, currency: str, period: int) -> Account:
    """One budget's spend in one of its periods (a month 202612, or a day 20261207), allocated its amount
    when it blocks (``UNLIMITED`` when it only alerts)."""
    return Account(id=Ids(customer_pk).budget(budget_pk, period), ledger=currency_ledger(currency),
                   code=AccountCode.BUDGET, flags=BOUNDED, user_data_128=customer_pk, user_data_64=budget_pk,
                   user_data_32=period)


def _allocation(kind: str, account: Account, operator: AccountCode, code: TransferCode, amount: int) -> Transfer:
    return Transfer(id=derive(kind, account.id), debit_account_id=operator_account(operator, account.ledger).id,
                    credit_account_id=account.id, amount=amount, ledger=account.ledger, code=code,
                    user_data_128=account.user_data_128, user_data_64=account.user_data_64,
                    user_data_32=account.user_data_32)


def spend_watch_account(customer_pk: int, currency: str) -> Account:
    """What the customer has spent in ``currency`` since its first priced event under anomaly terms: a
    budget account (code BUDGET, budget 0, period 0) allocated ``UNLIMITED``, debited with each event's
    cost in the same booking as its limits; anomaly detection samples its ``debits_posted``."""
    return Account(id=Ids(customer_pk).spend_watch(currency), ledger=currency_ledger(currency),
                   code=AccountCode.BUDGET, flags=BOUNDED, user_data_128=customer_pk)


def run_allocation(account: Account, amount: int) -> Transfer:
    """A run's max_steps (in steps) or max_spend (money units) on its account."""
    return _allocation("run-allocation", account, AccountCode.OPERATOR_RUNS, TransferCode.RUN_ALLOCATION, amount)


def budget_allocation(account: Account, amount: int) -> Transfer:
    return _allocation("budget-allocation", account, AccountCode.OPERATOR_BUDGETS, TransferCode.BUDGET_ALLOCATION,
                       amount)


def unique_account(customer_pk: int, meter_pk: int, period: int, value: str) -> Account:
    """Credited with one unit when created (``unique_allocation``) and bounded: the one debit that counts
    the value in its meter's quota can happen once, whoever tries at the same time."""
    return Account(id=Ids(customer_pk).unique(meter_pk, period, value), ledger=unit_ledger(meter_pk),
                   code=AccountCode.UNIQUE_VALUE, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
                   user_data_128=customer_pk, user_data_64=meter_pk, user_data_32=period)


def unique_allocation(customer_pk: int, meter_pk: int, period: int, value: str) -> Transfer:
    ledger = unit_ledger(meter_pk)
    return Transfer(id=derive("unique-allocation", customer_pk, meter_pk, period, value),
                    debit_account_id=operator_account(AccountCode.OPERATOR_QUOTA, ledger).id,
                    credit_account_id=Ids(customer_pk).unique(meter_pk, period, value), amount=ONE, ledger=ledger,
                    code=TransferCode.UNIQUE_ALLOCATION, user_data_128=customer_pk, user_data_64=meter_pk,
                    user_data_32=period)


def quota_allocation(customer_pk: int, meter_pk: int, period: int, hard: Decimal) -> Transfer:
    """The period's hard limit, credited once (its id is the (customer, meter, period) key)."""
    ledger = unit_ledger(meter_pk)
    return Transfer(id=derive("quota-allocation", customer_pk, meter_pk, period),
                    debit_account_id=operator_account(AccountCode.OPERATOR_QUOTA, ledger).id,
                    credit_account_id=Ids(customer_pk).quota(meter_pk, period), amount=qty_units(hard), ledger=ledger,
                    code=TransferCode.QUOTA_ALLOCATION, user_data_128=customer_pk, user_data_64=meter_pk, user_data_32=period)


def spend_allocation(customer_pk: int, currency: str, period: int, cap: Decimal) -> Transfer:
    ledger = currency_ledger(currency)
    return Transfer(id=derive("spend-allocation", customer_pk, currency, period),
                    debit_account_id=operator_account(AccountCode.OPERATOR_SPEND, ledger).id,
                    credit_account_id=Ids(customer_pk).spend(currency, period), amount=money_units_ceil(cap),
                    ledger=ledger, code=TransferCode.SPEND_CAP_ALLOCATION, user_data_128=customer_pk, user_data_32=period)


# What this process has seen in the ledger: accounts (as created) and allocations. Neither is ever
# deleted nor changed, so a batch of limited ingest need not ask again (two statements per batch).
# Tests, whose database is rolled back, clear them (billing.common.process_caches).
KNOWN_ACCOUNTS: set[Account] = process_caches.register("billing.guardrails.accounts.KNOWN_ACCOUNTS", set())
KNOWN_ALLOCATIONS: set[Transfer] = process_caches.register("billing.guardrails.accounts.KNOWN_ALLOCATIONS", set())
# credit wallets seen in the ledger (created by grants, never deleted)
KNOWN_WALLETS: set[int] = process_caches.register("billing.guardrails.accounts.KNOWN_WALLETS", set())


def known_wallets(ids: list[int]) -> set[int]:
    return {i for i in ids if i in KNOWN_WALLETS}


def remember_wallets(ids: set[int]) -> None:
    _remember(KNOWN_WALLETS, list(ids))


def ensure(accounts: list[Account], allocations: list[Transfer]) -> set[int]:
    """Create accounts and their allocations if missing (a no-op when they are there), and bring each
    allocation to its amount (``follow``: the terms in force). Returns the accounts whose balances this
    changed (an allocation created or adjusted)."""
    created = _create(accounts, allocations)
    return created | follow(allocations, skip=created)


@dataclass
class Fold:
    """The accounts a batch's booking creates (``fold``): found absent when the batch read its accounts,
    with the allocations that credit them; their state as the decisions take it (``state``: fresh, holding
    their allocations); and the other accounts whose balances ``fold`` changed (to read again)."""

    accounts: list[Account]
    allocations: list[Transfer]
    state: dict[int, Account]
    changed: set[int]

    def remember(self) -> None:
        """Once booked: neither the accounts nor their allocations need be looked at again by this process."""
        if self.accounts:
            _remember(KNOWN_ACCOUNTS, self.accounts)
            _remember(KNOWN_ALLOCATIONS, self.allocations)
            created = {t.credit_account_id: t.amount for t in self.allocations if t.code in REDUCTION_OF}
            transaction.on_commit(lambda: FOLLOWED.update(created))


def unknown(accounts: list[Account]) -> list[Account]:
    """The accounts (each once) this process has not seen in the ledger: the batch reads them with the others."""
    return [a for a in {a.id: a for a in accounts}.values() if a not in KNOWN_ACCOUNTS]


def unknown_allocations(allocations: list[Transfer]) -> set[int]:
    """The ids of the allocations this process has not seen in the ledger."""
    return {t.id for t in allocations if t not in KNOWN_ALLOCATIONS}


def fold(unseen: list[Account], allocations: list[Transfer], unseen_t: set[int], found: dict[int, Account]) -> Fold:
    """Of the batch's accounts not seen before (``unseen``) and read with the others (``found``): those
    absent are left to the booking to create, with their allocations (``Fold``), instead of ledger calls of
    their own before it (an agent run's first events); the others are checked and their allocations
    ensured as ``ensure`` does. An allocation not seen before the read (``unseen_t``) may have been
    created after it (by a concurrent booking that created its account): its account is read again
    (``Fold.changed``), as is one whose allocation this creates or adjusts."""
    missing = [a for a in unseen if a.id not in found]
    seen = [a for a in unseen if a.id in found]
    different = [a.id for a in seen if not _same(found[a.id], a)]
    if different:
        raise RuntimeError(f"ledger accounts exist with other fields: {different}")
    _remember(KNOWN_ACCOUNTS, seen)
    new = {a.id for a in missing}
    folded = [t for t in {t.id: t for t in allocations}.values() if t.credit_account_id in new]
    rest = [t for t in allocations if t.credit_account_id not in new]
    changed = ensure([], rest) | {t.credit_account_id for t in rest if t.id in unseen_t} if rest else set()
    credits: dict[int, int] = {}
    debits: dict[int, int] = {}
    for t in folded:
        credits[t.credit_account_id] = credits.get(t.credit_account_id, 0) + t.amount
        debits[t.debit_account_id] = debits.get(t.debit_account_id, 0) + t.amount
    now = time.time_ns()
    state = {a.id: dataclasses.replace(a, debits_posted=debits.get(a.id, 0), credits_posted=credits.get(a.id, 0),
                                       timestamp=now) for a in missing}
    return Fold(missing, folded, state, changed)


def _same(stored: Account, wanted: Account) -> bool:
    return (stored.flags, stored.ledger, stored.code, stored.user_data_128, stored.user_data_64,
            stored.user_data_32) == (wanted.flags, wanted.ledger, wanted.code, wanted.user_data_128,
                                     wanted.user_data_64, wanted.user_data_32)


def _create(accounts: list[Account], allocations: list[Transfer]) -> set[int]:
    """Create what is missing; returns the accounts whose allocation this call created (at the amount
    wanted: nothing to follow; a unique value's too). An allocation of an account this call created cannot exist yet, so it is
    created without looking it up first (a new agent run's accounts cost two ledger calls, not three)."""
    unique = [a for a in {a.id: a for a in accounts}.values() if a not in KNOWN_ACCOUNTS]
    new: set[int] = set()
    if unique:
        statuses = get_ledger().create_accounts(unique)
        bad = [(a.id, s) for a, s in zip(unique, statuses, strict=True) if not s.ok]
        if bad:
            raise RuntimeError(f"ledger refused accounts: {bad}")
        _remember(KNOWN_ACCOUNTS, unique)
        new = {a.id for a, s in zip(unique, statuses, strict=True) if s is Status.CREATED}
    unique_t = [t for t in {t.id: t for t in allocations}.values() if t not in KNOWN_ALLOCATIONS]
    older = [t for t in unique_t if t.credit_account_id not in new]
    if older:
        found = get_ledger().lookup_transfers([t.id for t in older])
        if all(_allocated(t, found.get(t.id)) for t in older):
            _remember(KNOWN_ALLOCATIONS, older)
            unique_t = [t for t in unique_t if t.credit_account_id in new]
    if not unique_t:
        return set()
    statuses = get_ledger().create_transfers(unique_t)
    bad_t = [(t.id, s) for t, s in zip(unique_t, statuses, strict=True) if not s.ok]
    if bad_t:
        # a limit changed within a period: the first allocation stays, ``follow`` adjusts it
        bad_t = [(i, s) for i, s in bad_t if s is not Status.EXISTS_WITH_DIFFERENT_AMOUNT]
    if bad_t:
        raise RuntimeError(f"ledger refused allocations: {bad_t}")
    _remember(KNOWN_ALLOCATIONS, unique_t)
    made = [t for t, s in zip(unique_t, statuses, strict=True) if s is Status.CREATED]
    created = [t for t in made if t.code in REDUCTION_OF]
    transaction.on_commit(lambda: FOLLOWED.update({t.credit_account_id: t.amount for t in created}))
    return {t.credit_account_id for t in made}


# Allocations follow the terms in force (contract: "Limits apply at once"): what this process last brought
# each bounded account's allocation to. An account whose terms say another amount is brought there by
# ``follow``; other processes notice the same way (the terms are read with every batch).
FOLLOWED: dict[int, int] = process_caches.register("billing.guardrails.accounts.FOLLOWED", {})
REDUCTION_OF = {int(TransferCode.QUOTA_ALLOCATION): int(TransferCode.QUOTA_REDUCTION),
                int(TransferCode.SPEND_CAP_ALLOCATION): int(TransferCode.SPEND_CAP_REDUCTION),
                int(TransferCode.RUN_ALLOCATION): int(TransferCode.RUN_REDUCTION),
                int(TransferCode.BUDGET_ALLOCATION): int(TransferCode.BUDGET_REDUCTION)}
_FOLLOW_TRIES = 8


def allocated_net(account_id: int, code: int) -> tuple[int, int]:
    """The account's allocation now: what allocations (``code``) credited it less what reductions took
    back, and how many of both it has had (the next adjustment's sequence number)."""
    ledger = get_ledger()
    ups = ledger.account_transfers(account_id, 8189, code=code)
    downs = ledger.account_transfers(account_id, 8189, code=REDUCTION_OF[code])
    net = sum(t.amount for t in ups if t.credit_account_id == account_id)
    net -= sum(t.amount for t in downs if t.debit_account_id == account_id)
    return net, len(ups) + len(downs)


def follow(allocations: list[Transfer], skip: Container[int] = ()) -> set[int]:
    """Bring each allocation's account to the allocation's amount, the terms in force: an upgrade credits
    the difference, a downgrade takes it back, as much as the account still has (below what is used
    already it is left with nothing: the next event is refused). Adjustments are transfers whose id
    derives from the account and its count of allocations so far: concurrent followers of one change
    write the same one once. Returns the accounts it adjusted."""
    todo = [t for t in {t.credit_account_id: t for t in allocations if t.code in REDUCTION_OF}.values()
            if FOLLOWED.get(t.credit_account_id) != t.amount and t.credit_account_id not in skip]
    ledger = get_ledger()
    adjusted: set[int] = set()
    for wanted in todo:
        account_id = wanted.credit_account_id
        for _ in range(_FOLLOW_TRIES):
            net, seq = allocated_net(account_id, wanted.code)
            if net == wanted.amount:
                break
            adjust_id = derive("allocation-adjust", account_id, seq)
            if wanted.amount > net:
                adjust = dataclasses.replace(wanted, id=adjust_id, amount=wanted.amount - net)
            else:
                account = ledger.lookup_accounts([account_id])[account_id]
                room = account.credits_posted - account.debits_posted - account.debits_pending
                amount = min(net - wanted.amount, room)
                if amount <= 0:  # used beyond the new terms already: nothing left to take back
                    break
                adjust = dataclasses.replace(wanted, id=adjust_id, amount=amount, debit_account_id=account_id,
                                             credit_account_id=wanted.debit_account_id,
                                             code=REDUCTION_OF[wanted.code])
            ledger.create_transfers([adjust])  # refused or another's: read again and decide again
            adjusted.add(account_id)
        transaction.on_commit(functools.partial(FOLLOWED.__setitem__, account_id, wanted.amount))
    return adjusted


def _remember(known: set[Any], seen: list[Any]) -> None:
    """Remember ``seen`` once the transaction that saw (or created) it commits: what a rolled-back
    transaction created is gone again."""
    transaction.on_commit(lambda: known.update(seen))


def _allocated(wanted: Transfer, stored: Transfer | None) -> bool:
    """The allocation is already in the ledger and creating it again could only answer ``exists`` or
    ``exists_with_different_amount`` (a limit changed mid-period: the first allocation stays). A
    transfer never changes once created, so this needs no lock: after the first batch of a period,
    ingest skips the allocations' own locking ledger call (it waited for the customer's account rows
    a second time per batch)."""
    if stored is None:
        return False
    fields = ("debit_account_id", "credit_account_id", "ledger", "code", "flags", "pending_id", "timeout",
              "user_data_128", "user_data_64", "user_data_32")
    return all(getattr(wanted, name) == getattr(stored, name) for name in fields)


def consumed_balance(account: Any) -> int:
    """What a credits-consumed account says the period consumed: posted credits less posted debits."""
    return max(account.credits_posted - account.debits_posted, 0)
