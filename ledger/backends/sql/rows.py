"""The SQL ledger's rows: the plain objects a batch works on, and each read and write of the tables
(one statement per list of ids on PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import connection

from ledger.models import U128_DIGITS, LedgerAccount, LedgerFailedTransfer, LedgerTransfer
from ledger.types import Account, AccountFlags, Transfer, TransferFlags

F = TransferFlags
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


def _save_accounts(accounts: list[_LockedAccount], states: Sequence[tuple[int, int]] = ()) -> None:
    """One UPDATE for the batch's changed accounts: a balance is written once per batch, however many
    transfers moved it. ``states``: (id, state) of stored pending transfers the batch closed, written by
    the same statement on PostgreSQL (a settle closes its holds in one round trip, not one per hold)."""
    if not accounts and not states:
        return
    if connection.vendor != "postgresql":
        for acc in accounts:
            LedgerAccount.objects.filter(pk=acc.id).update(**{name: getattr(acc, name) for name in _BALANCES})
        for pk, state in states:
            LedgerTransfer.objects.filter(pk=pk).update(state=state)
        return
    params: list[int] = [v for pair in states for v in pair]
    close = ("UPDATE ledger_transfer AS t SET state = s.state FROM (VALUES "  # noqa: S608
             f"{', '.join(['(%s::numeric, %s::smallint)'] * len(states))}) AS s(id, state) WHERE t.id = s.id")
    if not accounts:  # only states (a closing moves balances, so not from a batch): that UPDATE alone
        with connection.cursor() as cursor:
            cursor.execute(close, params)
        return
    closed = f"WITH closed AS ({close}) " if states else ""
    values = ", ".join(["(%s::numeric, %s::numeric, %s::numeric, %s::numeric, %s::numeric)"] * len(accounts))
    params += [v for acc in accounts for v in (acc.id, *(getattr(acc, name) for name in _BALANCES))]
    with connection.cursor() as cursor:
        cursor.execute(
            f"{closed}UPDATE ledger_account AS a SET debits_pending = v.dp, debits_posted = v.dpo, "  # noqa: S608
            "credits_pending = v.cp, credits_posted = v.cpo "
            f"FROM (VALUES {values}) AS v(id, dp, dpo, cp, cpo) WHERE a.id = v.id", params)


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
