"""One ``create_transfers`` call of the SQL ledger inside its transaction: load, lock, apply in order,
write."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import connection

from ledger.backends.sql.rows import (
    _CREDITS_BOUNDED,
    _DEBITS_BOUNDED,
    _LINKED,
    _PENDING,
    _POST,
    _STATE_PENDING,
    _STATE_POSTED,
    _TWO_PHASE,
    NewTransfer,
    State,
    _copy_transfers,
    _failed_by_id,
    _insert_transfers,
    _lock_accounts,
    _locked,
    _LockedAccount,
    _now_ns,
    _now_ns_block,
    _save_accounts,
    _transfers_by_id,
    replace_row,
)
from ledger.models import LedgerFailedTransfer, LedgerTransfer
from ledger.types import AMOUNT_MAX, TRANSIENT, Status, Transfer


class _Batch:
    """One create_transfers call inside its transaction: load, lock, apply in order, write.

    Cost matters here: every batch of limited ingest comes through, and one customer's batches
    serialise on its account rows, so the time between the account lock and the commit bounds that
    customer's throughput. The loop therefore works on plain ints (no IntFlag arithmetic, no model
    instances), the lookups by 2,000-3,000 ids are one plain statement each, and new transfers are
    written with one COPY on PostgreSQL.
    """

    def __init__(self, transfers: Sequence[Transfer], *, recheck: bool = False, fresh: bool = False) -> None:
        self.transfers = list(transfers)
        ids = [t.id for t in self.transfers if t.id]
        self.existing = {} if fresh else _transfers_by_id(ids)
        self.failed = {} if fresh else _failed_by_id(ids)
        self.plain = _plain_batch(self.transfers, self.existing, self.failed)  # before taking any lock
        pending_ids = sorted({t.pending_id for t in self.transfers if t.pending_id})
        self.pendings: dict[int, LedgerTransfer | NewTransfer] = {
            r.id: r for r in _locked(LedgerTransfer.objects.filter(pk__in=pending_ids))} if pending_ids else {}
        account_ids = {t.debit_account_id for t in self.transfers} | {t.credit_account_id for t in self.transfers}
        for p in self.pendings.values():
            account_ids |= {p.debit_account_id, p.credit_account_id}
        account_ids.discard(0)
        self.accounts = _lock_accounts(sorted(account_ids))
        if recheck:  # a retry after a concurrent insert of one of these ids: read them again under the locks
            self.existing = _transfers_by_id(ids)
            self.failed = _failed_by_id(ids)
            self.plain = _plain_batch(self.transfers, self.existing, self.failed)
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
        # only pendings loaded from the database are marked dirty; their new state goes with the balances
        closed = sorted((pending_id, int(stored.state)) for pending_id in self.pending_dirty
                        if isinstance(stored := self.pendings[pending_id], LedgerTransfer))
        _save_accounts([acc for acc in self.accounts.values() if acc.dirty], closed)
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
