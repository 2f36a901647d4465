"""The embedded ledger: TigerBeetle's semantics on the Django database.

One ``create_transfers`` call is one database transaction. It locks every account it touches (and
every pending transfer it posts or voids) with ``SELECT ... FOR UPDATE`` in ascending id order, so
concurrent calls serialise on the accounts they share and can never deadlock; on SQLite the
IMMEDIATE transaction mode (settings) takes the database write lock at BEGIN. Within the lock, events
are applied in order on in-memory copies of the rows; a linked chain that fails is rolled back to its
snapshot. Then the changed rows are written back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from django.db import IntegrityError, connection, transaction

from ledger.backends.base import LedgerBackend, LedgerRefused, RowWrite
from ledger.backends.sql.batch import _Batch
from ledger.backends.sql.booking import Booking
from ledger.backends.sql.rows import (
    _ACCOUNT_COLUMNS,
    _CREDITS_BOUNDED,
    _DEBITS_BOUNDED,
    State,
    _account,
    _account_rows,
    _joined,
    _locked,
    _now_ns,
    _now_ns_block,
    _same_account,
    _transfer,
    _transfers_by_id,
)
from ledger.models import LedgerAccount, LedgerTransfer
from ledger.types import Account, AccountFlags, Status, Transfer

_last_sweep = -1e9  # time.monotonic() of the process's last implicit sweep (SqlLedger._expire_due)


class SqlLedger(LedgerBackend):
    name = "sql"
    shares_database = True

    # --- accounts ---------------------------------------------------------------------------------
    def create_accounts(self, accounts: Sequence[Account]) -> list[Status]:
        existing: dict[int, Account] | None = None
        if connection.vendor == "postgresql" and accounts and all(a.id and a.ledger and a.code for a in accounts):
            # the common case, every account already there: one plain read, no transaction (and when some
            # are missing, what it read is what exists: an account is never deleted or changed)
            existing = {a.id: a for a in self._accounts([a.id for a in accounts], lock=False)}
            if all(_same_account(existing.get(a.id), a) for a in accounts):
                return [Status.EXISTS] * len(accounts)
        with transaction.atomic():
            if existing is None:
                existing = {a.id: _account(a) for a in LedgerAccount.objects.filter(pk__in=[a.id for a in accounts])}
            statuses: list[Status | None] = []
            rows: dict[int, LedgerAccount] = {}
            for account in accounts:
                invalid = (Status.ID_MUST_NOT_BE_ZERO if account.id == 0 else Status.LEDGER_MUST_NOT_BE_ZERO
                           if account.ledger == 0 else Status.CODE_MUST_NOT_BE_ZERO if account.code == 0 else None)
                old = existing.get(account.id)
                if invalid is None and old is not None:
                    invalid = Status.EXISTS if _same_account(old, account) else Status.EXISTS_WITH_DIFFERENT_ACCOUNT
                elif invalid is None and account.id not in rows:
                    rows[account.id] = LedgerAccount(
                        id=account.id, ledger=account.ledger, code=account.code, flags=int(account.flags),
                        user_data_128=account.user_data_128, user_data_64=account.user_data_64,
                        user_data_32=account.user_data_32, timestamp=_now_ns())
                statuses.append(invalid)
            if rows:
                # one INSERT; an account created concurrently by another transaction is skipped, and told
                # apart from ours by its timestamp (each is unique)
                LedgerAccount.objects.bulk_create(list(rows.values()), ignore_conflicts=True)
            winners = {a.id: a for a in LedgerAccount.objects.filter(pk__in=list(rows))} if rows else {}
            out: list[Status] = []
            for account, status in zip(accounts, statuses, strict=True):
                if status is None:
                    won = winners[account.id]
                    mine = rows.pop(account.id, None)
                    status = (Status.CREATED if mine is not None and won.timestamp == mine.timestamp
                              else Status.EXISTS if _same_account(_account(won), account)
                              else Status.EXISTS_WITH_DIFFERENT_ACCOUNT)
                out.append(status)
            return out

    def lookup_accounts(self, ids: Sequence[int]) -> dict[int, Account]:
        self._expire_due()
        return {a.id: a for a in self._accounts(ids, lock=False)}

    def peek_accounts(self, ids: Sequence[int]) -> dict[int, Account]:
        """Without the expiry sweep's statement (one round trip fewer per limited batch): what expired and is
        not released yet still counts as held, so the optimistic pass can only refuse on it, and a refusal
        goes to the careful pass, whose ``lock_accounts`` sweeps first."""
        return {a.id: a for a in self._accounts(ids, lock=False)}

    def lock_accounts(self, ids: Sequence[int]) -> dict[int, Account]:
        if not connection.in_atomic_block:
            raise RuntimeError("lock_accounts holds its locks until the caller's transaction ends: call it in one")
        self._expire_due()
        return {a.id: a for a in self._accounts(ids, lock=True)}

    @staticmethod
    def _accounts(ids: Sequence[int], *, lock: bool) -> list[Account]:
        """The accounts found, in ascending id order; locked FOR UPDATE when ``lock`` (PostgreSQL: one plain
        statement, as every limited ingest batch reads its customer's accounts)."""
        ids = sorted(set(ids))
        if not ids:
            return []
        if connection.vendor != "postgresql":
            rows = LedgerAccount.objects.filter(pk__in=ids).order_by("pk")
            return [_account(row) for row in (_locked(rows) if lock else rows)]
        return [Account(id=pk, ledger=ledger, code=code, flags=AccountFlags(flags), user_data_128=ud128,
                        user_data_64=ud64, user_data_32=ud32, debits_pending=dp, debits_posted=dpo,
                        credits_pending=cp, credits_posted=cpo, timestamp=ts)
                for (pk, ledger, code, flags, ud128, ud64, ud32, dp, dpo, cp, cpo, ts)
                in _account_rows(ids, _ACCOUNT_COLUMNS, lock=lock)]

    def lookup_transfers(self, ids: Sequence[int]) -> dict[int, Transfer]:
        if connection.vendor == "postgresql":
            return {row.id: _transfer(row) for row in _transfers_by_id(list(ids)).values()}
        return {row.id: _transfer(row) for row in LedgerTransfer.objects.filter(pk__in=list(ids))}

    def account_transfers(self, account_id: int, limit: int = 100, *, code: int = 0,
                          user_data_32: int = 0) -> list[Transfer]:
        from django.db.models import Q

        rows = LedgerTransfer.objects.filter(Q(debit_account_id=account_id) | Q(credit_account_id=account_id))
        if code:
            rows = rows.filter(code=code)
        if user_data_32:
            rows = rows.filter(user_data_32=user_data_32)
        return [_transfer(row) for row in rows.order_by("timestamp")[:limit]]

    def ping(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    # --- expiry -------------------------------------------------------------------------------------
    SWEEP_INTERVAL = 0.1  # seconds between the implicit sweeps of one process

    def _expire_due(self) -> None:
        """The sweep run before each write and lookup, at most once per SWEEP_INTERVAL per process: a
        limited ingest batch makes two or three ledger calls within milliseconds, a web process serves
        many batches at once on its threads, and each sweep is a statement. A hold can thus outlive its
        timeout by up to that interval, or until the next sweep when the one that ran is rolled back
        with its caller's transaction (TigerBeetle, too, expires holds in periodic pulses, not at the
        nanosecond). Threads race on the timestamp harmlessly: at worst two sweep at once."""
        global _last_sweep
        now = time.monotonic()
        if now - _last_sweep >= self.SWEEP_INTERVAL:
            _last_sweep = now
            self.expire_pending()

    def expire_pending(self) -> int:
        now = time.time_ns()
        with connection.cursor() as cursor:  # a plain statement: every write and lookup runs it first
            cursor.execute("SELECT id FROM ledger_transfer WHERE state = %s AND expires_at <= %s",
                           [int(State.PENDING), now])
            due = [int(pk) for (pk,) in cursor.fetchall()]
        if not due:
            return 0
        expired = 0
        with transaction.atomic():
            pendings = list(_locked(LedgerTransfer.objects.filter(pk__in=due, state=State.PENDING)))
            ids = sorted({p.debit_account_id for p in pendings} | {p.credit_account_id for p in pendings})
            accounts = {a.id: a for a in _locked(LedgerAccount.objects.filter(pk__in=ids))}
            for pending in pendings:
                accounts[pending.debit_account_id].debits_pending -= pending.amount
                accounts[pending.credit_account_id].credits_pending -= pending.amount
                pending.state = State.PENDING_EXPIRED
                pending.save(update_fields=["state"])
                expired += 1
            for account in accounts.values():
                account.save(update_fields=["debits_pending", "credits_pending"])
        return expired

    # --- transfers ----------------------------------------------------------------------------------
    def create_transfers(self, transfers: Sequence[Transfer], *, fresh: bool = False) -> list[Status]:
        self._expire_due()
        # The ids are read before the accounts are locked (the common case: nobody else writes them). A
        # transaction that inserted one of them meanwhile holds those accounts until it commits; the insert
        # then fails, and the retry reads the ids again once it holds the locks, when that one has committed.
        for attempt in range(3):
            try:
                with transaction.atomic():
                    # fresh ids: their first try reads none of them (two statements fewer); were one stored
                    # after all, its insert fails and the retry reads them under the locks
                    return _Batch(transfers, recheck=attempt > 0, fresh=fresh and attempt == 0).run()
            except IntegrityError:  # the same new id inserted concurrently: redo
                continue
        with transaction.atomic():
            return _Batch(transfers, recheck=True).run()

    def book_with(self, transfers: Sequence[Transfer], expect: Mapping[int, tuple[int | None, int | None]] | None,
                  write: RowWrite, key: object, *, new_accounts: Sequence[Account] = (),
                  allocations: Sequence[Transfer] = ()) -> Any:
        """In the write's own transaction: on PostgreSQL one statement (the write takes the booking's common
        table expressions, ``booking``: the new accounts and their allocations too); on SQLite the write,
        then ``book_checked``, under the write lock. ``key`` is not needed: nothing outlives a rolled-back
        transaction. (Made to look like a ledger outside the database, ``shares_database`` off, it books the
        way such a ledger does: tests of that way.)"""
        if not self.shares_database:
            return super().book_with(transfers, expect, write, key, new_accounts=new_accounts, allocations=allocations)
        transfers = [*allocations, *transfers]
        if connection.vendor == "postgresql":
            booking = self.booking(transfers, expect, new_accounts)
            # one autocommitted statement; in a caller's transaction (tests, a management command) a savepoint
            # stands for the autocommit (and a write with nothing to book checks itself in one)
            with transaction.atomic() if connection.in_atomic_block or booking is None else contextlib.nullcontext():
                return write.run(booking)
        with transaction.atomic():
            result = write.run(None)
            self.book_checked(transfers, expect, new_accounts)
            return result

    def book_checked(self, transfers: Sequence[Transfer], expect: Mapping[int, tuple[int | None, int | None]] | None = None,
                     new_accounts: Sequence[Account] = ()) -> None:
        if not connection.in_atomic_block:
            raise RuntimeError("book_checked writes in the caller's transaction: call it in one")
        try:
            booking = self.booking(transfers, expect, new_accounts)
        except LedgerRefused:
            transaction.set_rollback(True)
            raise
        if booking is None:
            return
        if connection.vendor != "postgresql":  # SQLite: in process, a statement costs little
            fresh = self.create_accounts(new_accounts) if new_accounts else []
            if any(status is not Status.CREATED for status in fresh):
                transaction.set_rollback(True)
                raise LedgerRefused("an account the booking was to create exists")
            found = self.lookup_accounts(list(booking.expect))  # the write lock is held since BEGIN IMMEDIATE
            missed = [i for i, (low, high) in booking.expect.items() if i not in found
                      or (low is not None and found[i].debits_posted < low)
                      or (high is not None and found[i].debits_posted > high)]
            if missed:
                transaction.set_rollback(True)
                raise LedgerRefused(f"accounts moved since they were read: {missed}")
            statuses = self.create_transfers(booking.transfers)
            refused = [(t.id, s.value) for t, s in zip(booking.transfers, statuses, strict=True) if s is not Status.CREATED]
            if refused:
                transaction.set_rollback(True)
                raise LedgerRefused(f"transfers refused: {refused}")
            return
        with connection.cursor() as cursor:
            cursor.execute(f"WITH {booking.ctes} SELECT {booking.counts}", booking.params)
            counts = cursor.fetchone()
        if tuple(counts) != booking.expected:
            transaction.set_rollback(True)
            raise LedgerRefused(booking.refusal(counts))

    def booking(self, transfers: Sequence[Transfer], expect: Mapping[int, tuple[int | None, int | None]] | None = None,
                new_accounts: Sequence[Account] = ()) -> Booking | None:
        """``book_checked``'s statement, for a caller that runs it as part of its own (PostgreSQL): the
        common table expressions to append to its ``WITH``, their parameters (``%s``), and ``ok``, a
        condition true exactly when the booking went as expected. The caller must make the statement fail
        unless ``ok`` (``tollgate_refuse_unless``, ledger migration 0003), so that nothing of it is kept.
        ``new_accounts`` are created by the same statement, with their balances after the transfers (checked
        here against their flags and ``expect``); it fails when one of them exists by then. None when there
        is nothing to book; ``LedgerRefused`` for transfers it cannot book at all."""
        expect = expect or {}
        transfers = list(transfers)
        if set(expect) - {t.debit_account_id for t in transfers} - {t.credit_account_id for t in transfers}:
            raise ValueError("an expectation names an account none of the transfers moves")
        if not transfers and not new_accounts:
            return None
        malformed = [t.id for t in transfers if not t.id or int(t.flags) or t.pending_id or t.timeout or not t.ledger
                     or not t.code or not t.debit_account_id or not t.credit_account_id
                     or t.debit_account_id == t.credit_account_id or t.amount < 0]
        if malformed or len({t.id for t in transfers}) != len(transfers):
            raise LedgerRefused(f"not fresh single-phase transfers with distinct ids: {malformed or 'repeated ids'}")
        moves: dict[tuple[int, int], list[int]] = {}  # (account, ledger) -> [debited, credited]
        for t in transfers:
            moves.setdefault((t.debit_account_id, int(t.ledger)), [0, 0])[0] += t.amount
            moves.setdefault((t.credit_account_id, int(t.ledger)), [0, 0])[1] += t.amount
        new = {a.id: a for a in new_accounts}
        created = _new_balances(new, moves, expect) if new else []
        keys = sorted(k for k in moves if k[0] not in new)
        bounds = [expect.get(k[0], (None, None)) for k in keys]
        first = _now_ns_block(len(transfers) + len(created))
        columns: list[list[object]] = [
                   [k[0] for k in keys], [k[1] for k in keys], [moves[k][0] for k in keys], [moves[k][1] for k in keys],
                   ["" if b[0] is None else b[0] for b in bounds], ["" if b[1] is None else b[1] for b in bounds],
                   [t.id for t in transfers], [t.debit_account_id for t in transfers],
                   [t.credit_account_id for t in transfers], [t.amount for t in transfers],
                   [int(t.ledger) for t in transfers], [int(t.code) for t in transfers],
                   [t.user_data_128 for t in transfers], [t.user_data_64 for t in transfers],
                   [t.user_data_32 for t in transfers], [first + i for i in range(len(transfers))]]
        if not created:
            return Booking(transfers, dict(expect), [_joined(column) for column in columns],
                           (len(keys), len(transfers), 0))
        ts = first + len(transfers)
        columns += [[a.id for a, _, _ in created], [int(a.ledger) for a, _, _ in created],
                    [int(a.code) for a, _, _ in created], [int(a.flags) for a, _, _ in created],
                    [a.user_data_128 for a, _, _ in created], [a.user_data_64 for a, _, _ in created],
                    [a.user_data_32 for a, _, _ in created], [d for _, d, _ in created], [c for _, _, c in created],
                    [ts + i for i in range(len(created))]]
        return Booking(transfers, dict(expect), [_joined(column) for column in columns],
                       (len(keys), len(transfers), 0, len(created)))


def _new_balances(new: Mapping[int, Account], moves: Mapping[tuple[int, int], list[int]],
                  expect: Mapping[int, tuple[int | None, int | None]]) -> list[tuple[Account, int, int]]:
    """The accounts to create, in ascending id order, each with its debits and credits posted after the
    booking's transfers; ``LedgerRefused`` when a transfer is on another ledger than its new account, or
    the balances break its flags, or an expectation of its debits (none before the booking) does not hold."""
    out: list[tuple[Account, int, int]] = []
    for account_id in sorted(new):
        account = new[account_id]
        if not account.id or not account.ledger or not account.code:
            raise LedgerRefused(f"account {account_id}: id, ledger and code must not be zero")
        on = [(ledger, dc) for (i, ledger), dc in moves.items() if i == account_id]
        if any(ledger != int(account.ledger) for ledger, _ in on):
            raise LedgerRefused(f"account {account_id}: a transfer on another ledger")
        debits, credits = sum(dc[0] for _, dc in on), sum(dc[1] for _, dc in on)
        flags = int(account.flags)
        low, high = expect.get(account_id, (None, None))
        if ((flags & _DEBITS_BOUNDED and debits > credits) or (flags & _CREDITS_BOUNDED and credits > debits)
                or (low is not None and low > 0) or (high is not None and high < 0)):
            raise LedgerRefused(f"new account {account_id}: the transfers exceed its limits or what was expected")
        out.append((account, debits, credits))
    return out


__all__ = ["Booking", "SqlLedger"]
