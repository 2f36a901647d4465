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
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction

from ledger.backends.base import LedgerBackend, LedgerRefused, RowWrite
from ledger.models import U128_DIGITS, LedgerAccount, LedgerFailedTransfer, LedgerTransfer
from ledger.types import AMOUNT_MAX, TRANSIENT, Account, AccountFlags, Status, Transfer, TransferFlags

F = TransferFlags
_last_sweep = -1e9  # time.monotonic() of the process's last implicit sweep (SqlLedger._expire_due)
State = LedgerTransfer.State
_last_ts = 0


def _now_ns() -> int:
    """Strictly increasing nanosecond timestamps within the process (TigerBeetle's are unique too)."""
    global _last_ts
    _last_ts = max(time.time_ns(), _last_ts + 1)
    return _last_ts


def _now_ns_block(count: int) -> int:
    """The first of ``count`` consecutive timestamps, as ``count`` calls of _now_ns would give."""
    global _last_ts
    first = max(time.time_ns(), _last_ts + 1)
    _last_ts = first + count - 1
    return first


@dataclass(slots=True)
class NewTransfer:
    """A transfer created in this batch: a plain object (a model instance per transfer cost more than the
    bookkeeping), written in one statement by _insert_transfers."""

    id: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    requested_amount: int
    pending_id: int
    ledger: int
    code: int
    flags: int
    timeout: int
    user_data_128: int
    user_data_64: int
    user_data_32: int
    timestamp: int
    state: int
    expires_at: int | None


def _account(row: LedgerAccount) -> Account:
    return Account(id=row.id, ledger=row.ledger, code=row.code, flags=AccountFlags(row.flags),
                   user_data_128=row.user_data_128, user_data_64=row.user_data_64, user_data_32=row.user_data_32,
                   debits_pending=row.debits_pending, debits_posted=row.debits_posted,
                   credits_pending=row.credits_pending, credits_posted=row.credits_posted, timestamp=row.timestamp)


def _transfer(row: LedgerTransfer | NewTransfer) -> Transfer:
    return Transfer(id=row.id, debit_account_id=row.debit_account_id, credit_account_id=row.credit_account_id,
                    amount=row.amount, ledger=row.ledger, code=row.code, flags=TransferFlags(row.flags),
                    pending_id=row.pending_id, timeout=row.timeout, user_data_128=row.user_data_128,
                    user_data_64=row.user_data_64, user_data_32=row.user_data_32, timestamp=row.timestamp)


def _locked(qs):
    return qs.select_for_update().order_by("pk") if connection.vendor == "postgresql" else qs.order_by("pk")


class SqlLedger(LedgerBackend):
    name = "sql"
    shares_database = True

    # --- accounts ---------------------------------------------------------------------------------
    def create_accounts(self, accounts: Sequence[Account]) -> list[Status]:
        if connection.vendor == "postgresql" and accounts and all(a.id and a.ledger and a.code for a in accounts):
            # the common case, every account already there: one plain read, no transaction
            stored = {a.id: a for a in self._accounts([a.id for a in accounts], lock=False)}
            if all(_same_account(stored.get(a.id), a) for a in accounts):
                return [Status.EXISTS] * len(accounts)
        with transaction.atomic():
            existing = {a.id: a for a in LedgerAccount.objects.filter(pk__in=[a.id for a in accounts])}
            statuses: list[Status] = []
            for account in accounts:
                if account.id == 0:
                    statuses.append(Status.ID_MUST_NOT_BE_ZERO)
                    continue
                if account.ledger == 0:
                    statuses.append(Status.LEDGER_MUST_NOT_BE_ZERO)
                    continue
                if account.code == 0:
                    statuses.append(Status.CODE_MUST_NOT_BE_ZERO)
                    continue
                old = existing.get(account.id)
                if old is not None:
                    same = _same_account(_account(old), account)
                    statuses.append(Status.EXISTS if same else Status.EXISTS_WITH_DIFFERENT_ACCOUNT)
                    continue
                row = LedgerAccount(id=account.id, ledger=account.ledger, code=account.code, flags=int(account.flags),
                                    user_data_128=account.user_data_128, user_data_64=account.user_data_64,
                                    user_data_32=account.user_data_32, timestamp=_now_ns())
                try:
                    with transaction.atomic():
                        row.save(force_insert=True)
                except IntegrityError:  # created concurrently: compare with what won
                    existing[account.id] = LedgerAccount.objects.get(pk=account.id)
                    old = existing[account.id]
                    same = (old.flags, old.ledger, old.code) == (int(account.flags), account.ledger, account.code)
                    statuses.append(Status.EXISTS if same else Status.EXISTS_WITH_DIFFERENT_ACCOUNT)
                    continue
                existing[account.id] = row
                statuses.append(Status.CREATED)
            return statuses

    def lookup_accounts(self, ids: Sequence[int]) -> dict[int, Account]:
        self._expire_due()
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
    def create_transfers(self, transfers: Sequence[Transfer]) -> list[Status]:
        self._expire_due()
        for _attempt in range(3):
            try:
                with transaction.atomic():
                    return _Batch(transfers).run()
            except IntegrityError:  # the same new id inserted concurrently through other accounts: redo
                continue
        with transaction.atomic():
            return _Batch(transfers).run()

    def book_with(self, transfers: Sequence[Transfer], expect: Mapping[int, tuple[int | None, int | None]] | None,
                  write: RowWrite, key: object) -> Any:
        """In the write's own transaction: on PostgreSQL one statement (the write takes the booking's common
        table expressions, ``booking``); on SQLite the write, then ``book_checked``, under the write lock.
        ``key`` is not needed: nothing outlives a rolled-back transaction. (Made to look like a ledger outside
        the database, ``shares_database`` off, it books the way such a ledger does: tests of that way.)"""
        if not self.shares_database:
            return super().book_with(transfers, expect, write, key)
        if connection.vendor == "postgresql":
            booking = self.booking(transfers, expect)
            # one autocommitted statement; in a caller's transaction (tests, a management command) a savepoint
            # stands for the autocommit (and a write with nothing to book checks itself in one)
            with transaction.atomic() if connection.in_atomic_block or booking is None else contextlib.nullcontext():
                return write.run(booking)
        with transaction.atomic():
            result = write.run(None)
            self.book_checked(transfers, expect)
            return result

    def book_checked(self, transfers: Sequence[Transfer], expect: Mapping[int, tuple[int | None, int | None]] | None = None
                     ) -> None:
        if not connection.in_atomic_block:
            raise RuntimeError("book_checked writes in the caller's transaction: call it in one")
        try:
            booking = self.booking(transfers, expect)
        except LedgerRefused:
            transaction.set_rollback(True)
            raise
        if booking is None:
            return
        if connection.vendor != "postgresql":  # SQLite: in process, a statement costs little
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

    def booking(self, transfers: Sequence[Transfer], expect: Mapping[int, tuple[int | None, int | None]] | None = None
                ) -> Booking | None:
        """``book_checked``'s statement, for a caller that runs it as part of its own (PostgreSQL): the
        common table expressions to append to its ``WITH``, their parameters (``%s``), and ``ok``, a
        condition true exactly when the booking went as expected. The caller must make the statement fail
        unless ``ok`` (``tollgate_refuse_unless``, ledger migration 0003), so that nothing of it is kept.
        None when there is nothing to book; ``LedgerRefused`` for transfers it cannot book at all."""
        expect = expect or {}
        transfers = list(transfers)
        if set(expect) - {t.debit_account_id for t in transfers} - {t.credit_account_id for t in transfers}:
            raise ValueError("an expectation names an account none of the transfers moves")
        if not transfers:
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
        keys = sorted(moves)
        bounds = [expect.get(k[0], (None, None)) for k in keys]
        first = _now_ns_block(len(transfers))
        columns: list[list[object]] = [
                   [k[0] for k in keys], [k[1] for k in keys], [moves[k][0] for k in keys], [moves[k][1] for k in keys],
                   ["" if b[0] is None else b[0] for b in bounds], ["" if b[1] is None else b[1] for b in bounds],
                   [t.id for t in transfers], [t.debit_account_id for t in transfers],
                   [t.credit_account_id for t in transfers], [t.amount for t in transfers],
                   [int(t.ledger) for t in transfers], [int(t.code) for t in transfers],
                   [t.user_data_128 for t in transfers], [t.user_data_64 for t in transfers],
                   [t.user_data_32 for t in transfers], [first + i for i in range(len(transfers))]]
        return Booking(transfers, dict(expect), [_joined(column) for column in columns], (len(keys), len(transfers), 0))


@dataclass(slots=True)
class Booking:
    """Fresh posted transfers as one set of common table expressions (``_BOOK``): the accounts' moves are
    summed per (account, ledger), the accounts locked in ascending id order, every limit flag, ledger and
    expectation (``expect``: account -> low/high bounds of its debits_posted) checked in the UPDATE, and
    the transfers inserted. It went as expected when ``counts`` equals ``expected``: every account moved,
    every transfer inserted (none existed), none failed before."""

    transfers: list[Transfer]
    expect: dict[int, tuple[int | None, int | None]]
    params: list[str]
    expected: tuple[int, int, int]

    @property
    def ctes(self) -> str:
        return _BOOK

    @property
    def counts(self) -> str:
        return _BOOK_COUNTS

    @property
    def ok(self) -> str:
        """The condition, its parameters (``ok_params``) following the ctes' (a constant text: it can be
        prepared once per connection)."""
        return f"({self.counts}) = (%s::int8, %s::int8, %s::int8)"

    @property
    def ok_params(self) -> list[int]:
        return list(self.expected)

    def refusal(self, counts: Sequence[int]) -> str:
        updated, inserted, failed_before = counts
        return (f"{len(self.transfers)} transfers: {len(self.transfers) - inserted} ids exist, {failed_before} failed "
                f"before, {self.expected[0] - updated} of {self.expected[0]} account moves missing, on another ledger, "
                "over a limit or not as expected")


@dataclass(slots=True)
class _LockedAccount:
    """An account row locked by the batch, as plain ints (balances change per transfer in the loop)."""

    id: int
    ledger: int
    flags: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    dirty: bool = False


_LINKED, _PENDING, _POST, _VOID = int(F.LINKED), int(F.PENDING), int(F.POST_PENDING_TRANSFER), int(F.VOID_PENDING_TRANSFER)
_TWO_PHASE = _POST | _VOID
_STATE_PENDING, _STATE_POSTED = int(State.PENDING), int(State.POSTED)
_DEBITS_BOUNDED = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CREDITS_BOUNDED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)


class _Batch:
    """One create_transfers call inside its transaction: load, lock, apply in order, write.

    Cost matters here: every batch of limited ingest comes through, and one customer's batches
    serialise on its account rows, so the time between the account lock and the commit bounds that
    customer's throughput. The loop therefore works on plain ints (no IntFlag arithmetic, no model
    instances), the lookups by 2,000-3,000 ids are one plain statement each, and new transfers are
    written with one COPY on PostgreSQL.
    """

    def __init__(self, transfers: Sequence[Transfer]) -> None:
        self.transfers = list(transfers)
        ids = [t.id for t in self.transfers if t.id]
        self.existing = _transfers_by_id(ids)
        self.failed = _failed_by_id(ids)
        self.plain = _plain_batch(self.transfers, self.existing, self.failed)  # before taking any lock
        pending_ids = sorted({t.pending_id for t in self.transfers if t.pending_id})
        self.pendings: dict[int, LedgerTransfer | NewTransfer] = {
            r.id: r for r in _locked(LedgerTransfer.objects.filter(pk__in=pending_ids))} if pending_ids else {}
        account_ids = {t.debit_account_id for t in self.transfers} | {t.credit_account_id for t in self.transfers}
        for p in self.pendings.values():
            account_ids |= {p.debit_account_id, p.credit_account_id}
        account_ids.discard(0)
        self.accounts = _lock_accounts(sorted(account_ids))
        self.new_rows: list[NewTransfer] = []
        self.new_failed: dict[int, str] = {}
        self.pending_dirty: set[int] = set()
        self.undo: list[tuple[object, str, object]] | None = None
        self.new_by_id: dict[int, NewTransfer] = {}
        self.undo_rows = 0

    # A linked chain that fails is rolled back with an undo log of what its earlier members changed
    # (a full snapshot per chain made a 1,000-event batch quadratic).
    def _change(self, obj: object, attr: str, value: object) -> None:
        if self.undo is not None:
            self.undo.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    def _begin_chain(self) -> None:
        self.undo = []
        self.undo_rows = len(self.new_rows)
        self.undo_pendings: list[int] = []
        self.undo_failed: list[int] = []

    def _rollback_chain(self) -> None:
        for obj, attr, old in reversed(self.undo or []):
            setattr(obj, attr, old)
        for row in self.new_rows[self.undo_rows:]:
            self.new_by_id.pop(row.id, None)
        del self.new_rows[self.undo_rows:]
        for key in self.undo_pendings:
            self.pendings.pop(key, None)
        for key in self.undo_failed:
            self.new_failed.pop(key, None)
        self.undo = None

    def run(self) -> list[Status]:
        if self.plain is not None and self._run_plain(self.plain):
            return [Status.CREATED] * len(self.transfers)
        transfers = self.transfers
        count = len(transfers)
        linked = [bool(int(t.flags) & _LINKED) for t in transfers]
        statuses: list[Status | None] = [None] * count
        index = 0
        while index < count:
            end = index
            while end < count and linked[end]:
                end += 1
            if end == count:  # the last event of the batch is linked: the chain is open
                for i in range(index, end):
                    statuses[i] = Status.LINKED_EVENT_CHAIN_OPEN
                break
            if end == index:  # not part of a chain
                statuses[index] = self._apply(transfers[index])
                index += 1
                continue
            self._begin_chain()
            chain_failed = None
            for i in range(index, end + 1):
                status = self._apply(transfers[i])
                statuses[i] = status
                if status is not Status.CREATED and status is not Status.EXISTS:
                    chain_failed = i
                    break
            if chain_failed is not None:
                self._rollback_chain()
                own = statuses[chain_failed]
                for i in range(index, end + 1):
                    statuses[i] = own if i == chain_failed else Status.LINKED_EVENT_FAILED
                if own in TRANSIENT:
                    self.new_failed[transfers[chain_failed].id] = own.value
            self.undo = None
            index = end + 1
        self._write()
        return [s for s in statuses if s is not None]

    def _run_plain(self, plain: _Plain) -> bool:
        """Apply a plain batch in aggregate, if every bounded account can take the whole batch: then every
        transfer would pass its limit check in order too (amounts are >= 0 and, all succeeding, debits
        and credits only grow), so each is ``created``, and each account is updated once by its total.
        False (nothing changed) when an account is missing or a limit could bind: the caller then
        applies the batch transfer by transfer, which decides exactly which event fails."""
        accounts = self.accounts
        for debit_id, credit_id, ledger in plain.pairs:
            dr, cr = accounts.get(debit_id), accounts.get(credit_id)
            if dr is None or cr is None or dr.ledger != cr.ledger or ledger != dr.ledger:
                return False
        for account_id, total in plain.debits.items():
            acc = accounts[account_id]
            if acc.flags & _DEBITS_BOUNDED and acc.debits_pending + acc.debits_posted + total > acc.credits_posted:
                return False
        for account_id, total in plain.credits.items():
            acc = accounts[account_id]
            if acc.flags & _CREDITS_BOUNDED and acc.credits_pending + acc.credits_posted + total > acc.debits_posted:
                return False
        for account_id, total in plain.debits.items():
            accounts[account_id].debits_posted += total
            accounts[account_id].dirty = True
        for account_id, total in plain.credits.items():
            accounts[account_id].credits_posted += total
            accounts[account_id].dirty = True
        first = _now_ns_block(len(self.transfers))
        _save_accounts([acc for acc in accounts.values() if acc.dirty])
        if plain.heads is not None:
            _copy_transfers("".join([f"{head}{first + i}{_PLAIN_TAIL}" for i, head in enumerate(plain.heads)]))
        else:
            _insert_transfers([
                NewTransfer(t.id, t.debit_account_id, t.credit_account_id, t.amount, t.amount, 0, t.ledger, t.code,
                            int(t.flags), 0, t.user_data_128, t.user_data_64, t.user_data_32, first + i, _STATE_POSTED,
                            None)
                for i, t in enumerate(self.transfers)])
        return True

    def _write(self) -> None:
        _save_accounts([acc for acc in self.accounts.values() if acc.dirty])
        for pending_id in self.pending_dirty:  # only pendings loaded from the database are marked dirty
            stored = self.pendings[pending_id]
            if isinstance(stored, LedgerTransfer):
                stored.save(update_fields=["state"])
        if self.new_rows:
            _insert_transfers(self.new_rows)
        if self.new_failed:
            LedgerFailedTransfer.objects.bulk_create(
                [LedgerFailedTransfer(id=k, status=v) for k, v in self.new_failed.items()], ignore_conflicts=True)

    def _add_row(self, row: NewTransfer) -> None:
        self.new_rows.append(row)
        self.new_by_id[row.id] = row

    def _fail(self, t: Transfer, status: Status) -> Status:
        if status in TRANSIENT and not int(t.flags) & _LINKED:
            self.new_failed[t.id] = status.value
            if self.undo is not None:
                self.undo_failed.append(t.id)
        return status

    def _exists(self, t: Transfer, row: LedgerTransfer | NewTransfer) -> Status:
        flags = int(t.flags)
        checks = [
            (flags, row.flags, Status.EXISTS_WITH_DIFFERENT_FLAGS),
            (t.pending_id, row.pending_id, Status.EXISTS_WITH_DIFFERENT_PENDING_ID),
            (t.timeout, row.timeout, Status.EXISTS_WITH_DIFFERENT_TIMEOUT),
        ]
        if not flags & _TWO_PHASE:
            checks += [(t.debit_account_id, row.debit_account_id, Status.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
                       (t.credit_account_id, row.credit_account_id, Status.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID)]
        checks.append((t.amount, row.requested_amount, Status.EXISTS_WITH_DIFFERENT_AMOUNT))
        inherits = bool(flags & _TWO_PHASE)  # 0 = the pending's value
        for given, stored, status in ((t.user_data_128, row.user_data_128, Status.EXISTS_WITH_DIFFERENT_USER_DATA_128),
                                      (t.user_data_64, row.user_data_64, Status.EXISTS_WITH_DIFFERENT_USER_DATA_64),
                                      (t.user_data_32, row.user_data_32, Status.EXISTS_WITH_DIFFERENT_USER_DATA_32)):
            if given or not inherits:
                checks.append((given, stored, status))
        if t.ledger:
            checks.append((t.ledger, row.ledger, Status.EXISTS_WITH_DIFFERENT_LEDGER))
        if t.code:
            checks.append((t.code, row.code, Status.EXISTS_WITH_DIFFERENT_CODE))
        for given, stored, status in checks:
            if given != stored:
                return status
        return Status.EXISTS

    def _apply(self, t: Transfer) -> Status:
        tid = t.id
        if tid == 0:
            return Status.ID_MUST_NOT_BE_ZERO
        row = self.existing.get(tid) or self.new_by_id.get(tid)
        if row is not None:
            return self._exists(t, row)
        if tid in self.failed or tid in self.new_failed:
            return Status.ID_ALREADY_FAILED
        flags = int(t.flags)
        two_phase = flags & _TWO_PHASE
        if (flags & _PENDING and two_phase) or two_phase == _TWO_PHASE:
            return Status.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if two_phase:
            return self._post_or_void(t)
        if t.debit_account_id == 0:
            return Status.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if t.credit_account_id == 0:
            return Status.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if t.debit_account_id == t.credit_account_id:
            return Status.ACCOUNTS_MUST_BE_DIFFERENT
        if t.pending_id != 0:
            return Status.PENDING_ID_MUST_BE_ZERO
        pending = flags & _PENDING
        if t.timeout and not pending:
            return Status.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if t.ledger == 0:
            return Status.LEDGER_MUST_NOT_BE_ZERO
        if t.code == 0:
            return Status.CODE_MUST_NOT_BE_ZERO
        dr, cr = self.accounts.get(t.debit_account_id), self.accounts.get(t.credit_account_id)
        if dr is None:
            return self._fail(t, Status.DEBIT_ACCOUNT_NOT_FOUND)
        if cr is None:
            return self._fail(t, Status.CREDIT_ACCOUNT_NOT_FOUND)
        if dr.ledger != cr.ledger:
            return Status.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
        if t.ledger != dr.ledger:
            return Status.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
        amount = t.amount
        status = _check_limits(dr, cr, amount)
        if status is not None:
            return self._fail(t, status)
        undo = self.undo
        if pending:
            if undo is not None:
                undo.append((dr, "debits_pending", dr.debits_pending))
                undo.append((cr, "credits_pending", cr.credits_pending))
            dr.debits_pending += amount
            cr.credits_pending += amount
        else:
            if undo is not None:
                undo.append((dr, "debits_posted", dr.debits_posted))
                undo.append((cr, "credits_posted", cr.credits_posted))
            dr.debits_posted += amount
            cr.credits_posted += amount
        dr.dirty = cr.dirty = True
        ts = _now_ns()
        self._add_row(NewTransfer(
            tid, t.debit_account_id, t.credit_account_id, amount, amount, 0, t.ledger, t.code, flags, t.timeout,
            t.user_data_128, t.user_data_64, t.user_data_32, ts, _STATE_PENDING if pending else _STATE_POSTED,
            ts + t.timeout * 1_000_000_000 if pending and t.timeout else None))
        return Status.CREATED

    def _post_or_void(self, t: Transfer) -> Status:
        if t.pending_id == 0:
            return Status.PENDING_ID_MUST_NOT_BE_ZERO
        if t.timeout:
            return Status.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        pending = self.pendings.get(t.pending_id)
        if pending is None:
            in_batch = self.new_by_id.get(t.pending_id)
            if in_batch is None:
                return self._fail(t, Status.PENDING_TRANSFER_NOT_FOUND)
            pending = self.pendings[t.pending_id] = in_batch
            if self.undo is not None:
                self.undo_pendings.append(t.pending_id)
        if not pending.flags & _PENDING:
            return Status.PENDING_TRANSFER_NOT_PENDING
        if t.debit_account_id and t.debit_account_id != pending.debit_account_id:
            return Status.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id and t.credit_account_id != pending.credit_account_id:
            return Status.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        if t.ledger and t.ledger != pending.ledger:
            return Status.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
        if t.code and t.code != pending.code:
            return Status.PENDING_TRANSFER_HAS_DIFFERENT_CODE
        posting = bool(int(t.flags) & _POST)
        amount = pending.amount if (posting and t.amount == AMOUNT_MAX) else t.amount
        if posting and amount > pending.amount:
            return Status.EXCEEDS_PENDING_TRANSFER_AMOUNT
        if not posting and t.amount not in (0, pending.amount, AMOUNT_MAX):
            return Status.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        if pending.state == State.PENDING_POSTED:
            return Status.PENDING_TRANSFER_ALREADY_POSTED
        if pending.state == State.PENDING_VOIDED:
            return Status.PENDING_TRANSFER_ALREADY_VOIDED
        if pending.state == State.PENDING_EXPIRED or (pending.expires_at is not None and pending.expires_at <= time.time_ns()):
            return Status.PENDING_TRANSFER_EXPIRED
        dr, cr = self.accounts[pending.debit_account_id], self.accounts[pending.credit_account_id]
        self._change(dr, "debits_pending", dr.debits_pending - pending.amount)
        self._change(cr, "credits_pending", cr.credits_pending - pending.amount)
        if posting:
            self._change(dr, "debits_posted", dr.debits_posted + amount)
            self._change(cr, "credits_posted", cr.credits_posted + amount)
        dr.dirty = cr.dirty = True
        self._change(pending, "state", State.PENDING_POSTED if posting else State.PENDING_VOIDED)
        if pending.id in self.pendings and pending not in self.new_rows:
            self.pending_dirty.add(pending.id)
        self._add_row(replace_row(pending, t, amount if posting else pending.amount))
        return Status.CREATED


@dataclass(slots=True)
class _Plain:
    """A batch of fresh single-phase transfers (what limited ingest sends): whatever the balances, each
    transfer can only be created or fail its account's limit."""

    debits: dict[int, int]  # account id -> total debited by the batch
    credits: dict[int, int]
    pairs: set[tuple[int, int, int]]  # (debit account, credit account, ledger)
    heads: list[str] | None  # PostgreSQL: each row's COPY text up to its timestamp, rendered before the lock


def _plain_batch(transfers: list[Transfer], existing: dict, failed: dict) -> _Plain | None:
    """The batch's totals per account if it is plain: ids non-zero, new and distinct, no flag but linked,
    the last transfer not linked, no pending id or timeout, non-zero and distinct accounts, a ledger
    and a code, amounts >= 0. None otherwise (the batch goes transfer by transfer)."""
    if not transfers or int(transfers[-1].flags) & _LINKED:
        return None
    seen: set[int] = set()
    debits: dict[int, int] = defaultdict(int)
    credits: dict[int, int] = defaultdict(int)
    pairs: set[tuple[int, int, int]] = set()
    heads: list[str] | None = [] if connection.vendor == "postgresql" else None
    for t in transfers:
        tid, debit_id, credit_id, amount, ledger, flags = (
            t.id, t.debit_account_id, t.credit_account_id, t.amount, int(t.ledger), int(t.flags))
        if (not tid or tid in seen or tid in existing or tid in failed or flags & ~_LINKED or t.pending_id
                or t.timeout or not debit_id or not credit_id or debit_id == credit_id or not ledger or not t.code
                or amount < 0):
            return None
        seen.add(tid)
        debits[debit_id] += amount
        credits[credit_id] += amount
        pairs.add((debit_id, credit_id, ledger))
        if heads is not None:
            heads.append(f"{tid}\t{debit_id}\t{credit_id}\t{amount}\t{amount}\t0\t{ledger}\t{int(t.code)}\t{flags}\t0\t"
                         f"{t.user_data_128}\t{t.user_data_64}\t{t.user_data_32}\t")
    return _Plain(debits, credits, pairs, heads)


_PLAIN_TAIL = f"\t{_STATE_POSTED}\t\\N\n"  # state posted, no expiry


def _check_limits(dr: _LockedAccount, cr: _LockedAccount, amount: int) -> Status | None:
    if dr.flags & _DEBITS_BOUNDED and dr.debits_pending + dr.debits_posted + amount > dr.credits_posted:
        return Status.EXCEEDS_CREDITS
    if cr.flags & _CREDITS_BOUNDED and cr.credits_pending + cr.credits_posted + amount > cr.debits_posted:
        return Status.EXCEEDS_DEBITS
    return None


# --- reading and writing the tables ------------------------------------------------------------------
# On PostgreSQL a list of u128 ids goes as one comma-separated text parameter cast to numeric[]: the
# ORM's `pk__in` compiled one placeholder per id (≈40 ms for 2,700 ids) and psycopg's list dumper
# costs about as much again.
_ANY_IDS = "= ANY(string_to_array(%s, ',')::numeric[])"
_TRANSFER_COLUMNS = ("id", "debit_account_id", "credit_account_id", "amount", "requested_amount", "pending_id", "ledger",
                     "code", "flags", "timeout", "user_data_128", "user_data_64", "user_data_32", "timestamp", "state",
                     "expires_at")
_U128 = {"id", "debit_account_id", "credit_account_id", "amount", "requested_amount", "pending_id", "user_data_128",
         "user_data_64"}
_BALANCES = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


def _joined(ids: Sequence[object]) -> str:
    return ",".join(map(str, ids))


def _transfers_by_id(ids: list[int]) -> dict[int, LedgerTransfer | NewTransfer]:
    if not ids:
        return {}
    if connection.vendor != "postgresql":
        return {r.id: r for r in LedgerTransfer.objects.filter(pk__in=ids)}
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(_TRANSFER_COLUMNS)} FROM ledger_transfer WHERE id {_ANY_IDS}",  # noqa: S608
                       [_joined(ids)])
        found: dict[int, LedgerTransfer | NewTransfer] = {}
        for values in cursor.fetchall():
            row = NewTransfer(*(int(v) if v is not None else None for v in values))  # type: ignore[arg-type]
            found[row.id] = row
        return found


def _failed_by_id(ids: list[int]) -> dict[int, str]:
    if not ids:
        return {}
    if connection.vendor != "postgresql":
        return dict(LedgerFailedTransfer.objects.filter(pk__in=ids).values_list("pk", "status"))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, status FROM ledger_failed_transfer WHERE id {_ANY_IDS}", [_joined(ids)])  # noqa: S608
        return {int(pk): status for pk, status in cursor.fetchall()}


def _lock_accounts(ids: list[int]) -> dict[int, _LockedAccount]:
    """The accounts, locked FOR UPDATE in ascending id order (PostgreSQL); SQLite's IMMEDIATE
    transaction already holds the database write lock."""
    if not ids:
        return {}
    if connection.vendor != "postgresql":
        rows = _locked(LedgerAccount.objects.filter(pk__in=ids)).values_list("id", "ledger", "flags", *_BALANCES)
        return {row[0]: _LockedAccount(*row) for row in rows}
    return {pk: _LockedAccount(pk, ledger, flags, dp, dpo, cp, cpo) for pk, ledger, flags, dp, dpo, cp, cpo
            in _account_rows(ids, ("id", "ledger", "flags", *_BALANCES), lock=True)}


_ACCOUNT_COLUMNS = ("id", "ledger", "code", "flags", "user_data_128", "user_data_64", "user_data_32", *_BALANCES, "timestamp")


def _account_rows(ids: Sequence[int], columns: Sequence[str], *, lock: bool) -> list[tuple[int, ...]]:
    """PostgreSQL: ``columns`` of the accounts in ascending id order, as ints; locked FOR UPDATE in that
    order when ``lock``."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(columns)} FROM ledger_account WHERE id {_ANY_IDS} ORDER BY id"  # noqa: S608
                       + (" FOR UPDATE" if lock else ""), [_joined(sorted(ids))])
        return [tuple(int(v) for v in row) for row in cursor.fetchall()]


def _same_account(stored: Account | None, wanted: Account) -> bool:
    return stored is not None and (stored.flags, stored.ledger, stored.code, stored.user_data_128, stored.user_data_64,
                                   stored.user_data_32) == (wanted.flags, wanted.ledger, wanted.code,
                                                            wanted.user_data_128, wanted.user_data_64, wanted.user_data_32)


def _save_accounts(accounts: list[_LockedAccount]) -> None:
    """One UPDATE for the batch's changed accounts: a balance is written once per batch, however many
    transfers moved it."""
    if not accounts:
        return
    if connection.vendor != "postgresql":
        for acc in accounts:
            LedgerAccount.objects.filter(pk=acc.id).update(**{name: getattr(acc, name) for name in _BALANCES})
        return
    values = ", ".join(["(%s::numeric, %s::numeric, %s::numeric, %s::numeric, %s::numeric)"] * len(accounts))
    params = [v for acc in accounts for v in (acc.id, *(getattr(acc, name) for name in _BALANCES))]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE ledger_account AS a SET debits_pending = v.dp, debits_posted = v.dpo, credits_pending = v.cp, "  # noqa: S608
            f"credits_posted = v.cpo FROM (VALUES {values}) AS v(id, dp, dpo, cp, cpo) WHERE a.id = v.id", params)


def _insert_transfers(rows: list[NewTransfer]) -> None:
    """Write new transfers in one statement: a COPY on PostgreSQL (the rows are integers only, so the
    text format needs no escaping), one executemany on SQLite."""
    cols = ", ".join(_TRANSFER_COLUMNS)
    if connection.vendor == "postgresql":
        data = "".join([
            f"{r.id}\t{r.debit_account_id}\t{r.credit_account_id}\t{r.amount}\t{r.requested_amount}\t{r.pending_id}\t"
            f"{r.ledger}\t{r.code}\t{r.flags}\t{r.timeout}\t{r.user_data_128}\t{r.user_data_64}\t{r.user_data_32}\t"
            f"{r.timestamp}\t{r.state}\t{_NULL if r.expires_at is None else r.expires_at}\n" for r in rows])
        _copy_transfers(data)
        return
    placeholders = ", ".join(["%s"] * len(_TRANSFER_COLUMNS))
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO ledger_transfer ({cols}) VALUES ({placeholders})",  # noqa: S608
            [[str(getattr(r, c)).zfill(U128_DIGITS) if c in _U128 else getattr(r, c) for c in _TRANSFER_COLUMNS]
             for r in rows],
        )


_NULL = "\\N"


def _copy_transfers(data: str) -> None:
    """COPY rows (text format, _TRANSFER_COLUMNS order) into ledger_transfer on PostgreSQL."""
    import psycopg

    connection.ensure_connection()
    # wrap_database_errors: a raw psycopg error becomes Django's IntegrityError, which the caller retries
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as raw, \
            raw.copy(f"COPY ledger_transfer ({', '.join(_TRANSFER_COLUMNS)}) FROM STDIN") as copy:
        copy.write(data)


def replace_row(pending: LedgerTransfer | NewTransfer, t: Transfer, amount: int) -> NewTransfer:
    return NewTransfer(
        id=t.id, debit_account_id=pending.debit_account_id, credit_account_id=pending.credit_account_id, amount=amount,
        requested_amount=t.amount, pending_id=t.pending_id, ledger=pending.ledger, code=pending.code, flags=int(t.flags),
        timeout=0, user_data_128=t.user_data_128 or pending.user_data_128, user_data_64=t.user_data_64 or pending.user_data_64,
        user_data_32=t.user_data_32 or pending.user_data_32, timestamp=_now_ns(), state=_STATE_POSTED, expires_at=None)


# One statement for book_checked (PostgreSQL): the moves per (account, ledger) summed by the caller, with
# the bounds expected of each account's debits_posted, then the transfers. The accounts are locked in
# ascending id order first (those the caller locked are its already); an account moves only if it exists
# on that ledger, stays within its limit flags and is as expected, so the caller compares the counts.
_BOOK = f"""
m AS (
  SELECT * FROM unnest(string_to_array(%s, ',')::numeric[], string_to_array(%s, ',')::bigint[],
                       string_to_array(%s, ',')::numeric[], string_to_array(%s, ',')::numeric[],
                       string_to_array(%s, ',', '')::numeric[], string_to_array(%s, ',', '')::numeric[])
    AS m(id, ledger, d, c, low, high)
), locked AS (
  SELECT id FROM ledger_account WHERE id IN (SELECT id FROM m) ORDER BY id FOR UPDATE
), updated AS (
  UPDATE ledger_account AS a SET debits_posted = a.debits_posted + m.d, credits_posted = a.credits_posted + m.c
  FROM m JOIN locked ON locked.id = m.id
  WHERE a.id = m.id AND a.ledger = m.ledger
    AND (a.flags & {_DEBITS_BOUNDED} = 0 OR a.debits_pending + a.debits_posted + m.d <= a.credits_posted)
    AND (a.flags & {_CREDITS_BOUNDED} = 0 OR a.credits_pending + a.credits_posted + m.c <= a.debits_posted)
    AND (m.low IS NULL OR a.debits_posted >= m.low) AND (m.high IS NULL OR a.debits_posted <= m.high)
  RETURNING a.id
), v AS (
  SELECT * FROM unnest(string_to_array(%s, ',')::numeric[], string_to_array(%s, ',')::numeric[],
                       string_to_array(%s, ',')::numeric[], string_to_array(%s, ',')::numeric[],
                       string_to_array(%s, ',')::bigint[], string_to_array(%s, ',')::bigint[],
                       string_to_array(%s, ',')::numeric[], string_to_array(%s, ',')::numeric[],
                       string_to_array(%s, ',')::bigint[], string_to_array(%s, ',')::bigint[])
    AS v(id, dr, cr, amount, ledger, code, u128, u64, u32, ts)
), inserted AS (
  INSERT INTO ledger_transfer ({", ".join(_TRANSFER_COLUMNS)})
  SELECT id, dr, cr, amount, amount, 0, ledger, code, 0, 0, u128, u64, u32, ts, {_STATE_POSTED}, NULL FROM v
  ON CONFLICT (id) DO NOTHING RETURNING id
)"""  # noqa: S608 - constants only
_BOOK_COUNTS = """(SELECT count(*) FROM updated), (SELECT count(*) FROM inserted),
       (SELECT count(*) FROM ledger_failed_transfer WHERE id IN (SELECT id FROM v))"""


__all__ = ["Booking", "SqlLedger"]
