"""Step 3 of ingest, the limits: the batch's billable events of customers with a plan are debited in the
ledger before they are accepted (quota, spend cap, credits), in one of three ways (docs/ledger.md):
together with the insert (a ledger in the database), held then posted around the insert (TigerBeetle),
or event by event before it (a batch that cannot go as a whole, and reservations being settled)."""

from __future__ import annotations

import contextlib
import hashlib
from contextlib import nullcontext
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from billing.guardrails.limits import BatchDebit, Coverage, EventUsage, Terms, enforce
from billing.usage.contract import EventError
from billing.usage.ingest import store
from billing.usage.ingest.rows import Row
from billing.usage.ingest.store import STORED_MEANWHILE, StoredMeanwhile
from ledger import holds
from ledger.backends import get_ledger
from ledger.backends.base import LedgerRefused, LedgerUnavailable

_CAREFUL_LOCK_TIMEOUT_MS = 200

def debit_and_store(rows: list[Row], limited: list[Row], reservation: Any, now: datetime, terms: Terms | None
                    ) -> tuple[set[tuple[int, str]], dict[tuple[int, str], tuple[str, bool, str]], bool]:
    """Steps 3 and 4: the limits, then the insert, in the way the ledger allows. Returns the keys inserted,
    the stored rows (fingerprint, billable, reason) read on the way, and whether a stored refusal must be
    answered again (a retry of a refused event, in the batch ways: the per-event way marks it itself).

    A ledger in the same database is debited in the insert's own transaction (one transfer per account and
    batch); one outside it (TigerBeetle) holds the batch's debit first and posts it once the insert
    committed (ledger.holds); the settling of a reservation, or a batch neither can take as a whole, is
    debited first and per event (ids from events)."""
    ledger = get_ledger()
    if limited and reservation is None:
        if ledger.shares_database:
            return (*insert_debited(rows, limited, now, terms), True)
        if settings.LEDGER_HELD_BATCHES:
            held = insert_held(rows, limited, now, terms)
            if held is not None:
                return (*held, True)
    if reservation is not None or limited:
        enforce_limits(limited, reservation, now, terms)
    if not rows:
        return set(), {}, False
    # one INSERT statement: atomic and, in autocommit, committed (durable) before it returns
    return store.retrying_deadlocks(lambda: store.insert_rows(rows, received_at=now)), {}, False


def enforce_limits(rows: list[Row], reservation: Any, now: datetime, terms: Any) -> None:
    """Debit quotas, spend caps and credits in the ledger for the batch's billable events (one ledger
    round trip); mark refused events not billable, with reason ``rejected_<code>``. When the batch
    settles a reservation, its holds are closed first in the same ledger batch and the events' quota is
    debited only beyond what the reservation held (billing.guardrails.reservations)."""
    prefix: list[Any] = []
    coverage = None
    if reservation is not None:
        from billing.guardrails.reservations import settle_prefix

        mine = [r for r in rows if r.event.billable and r.customer_pk == reservation.customer_id
                and r.meter_pk == reservation.meter_id]
        prefix, covered = settle_prefix(reservation, sum((r.quantity for r in mine), Decimal(0)), now)
        coverage = Coverage(quantity=covered)
    # Events already stored went through the limits when they were first accepted (or were refused):
    # a retry must not touch the ledger again, whatever has changed since (a new plan, a raised limit).
    stored = store.stored_outcomes(rows)
    for row in rows:
        outcome = stored.get((row.customer_pk, row.event.event_id))
        if outcome is not None and outcome.startswith("rejected_"):
            row.refusal = refused_before(outcome)
    usages = [
        usage_of(r, coverage if reservation is not None and r.customer_pk == reservation.customer_id
               and r.meter_pk == reservation.meter_id else None)
        for r in rows if r.event.billable and (r.customer_pk, r.event.event_id) not in stored
    ]
    refusals = enforce(usages, prefix=prefix, terms=terms)
    if reservation is not None:
        from billing.guardrails.reservations import refund_refused_coverage

        refund_refused_coverage(reservation, sum((u.covered_quantity for u in usages if u.key in refusals), Decimal(0)))
    apply_refusals(rows, refusals)


class _Refused(Exception):
    """The optimistic pass of insert_debited found an event over a limit: roll back and decide first."""


def insert_debited(rows: list[Row], limited: list[Row], now: datetime, terms: Any
                    ) -> tuple[set[tuple[int, str]], dict[tuple[int, str], tuple[str, bool, str]]]:
    """Insert the batch and debit its limited events in one transaction (a ledger that shares the
    database: billing.guardrails.limits.BatchDebit). Returns the keys inserted, and the stored rows
    (fingerprint, billable, reason) read on the way, by key.

    First optimistically, on PostgreSQL: read which of the limited events are stored already (a retry is
    never debited again) and the customer's accounts, without locking anything; decide for the others;
    then insert the batch and book the debit in one statement, which takes the account locks and holds
    the ledger to what the decision assumed (every bounded account still holds the batch, every usage
    counter is still in the tier the events were priced in) and fails whole unless every debited event
    was inserted by it and the booking went as expected (``tollgate_refuse_unless``). Autocommitted, it
    is the batch's only write and its commit: one customer's concurrent batches serialise only on that
    statement. (SQLite inserts, reads the accounts, decides and books in one transaction, which holds
    the database's write lock throughout.) Raw events are append-only, so a refused event cannot be
    marked after its insert: when an event is refused, or the ledger refuses the booking (accounts moved
    meanwhile, or an id was stored by another request meanwhile), nothing was kept and the batch runs
    again deciding first under locks: lock, read which ids are stored, decide, insert the refused events
    as not billable, debit what was inserted. That pass locks before it inserts; when one of its ids is
    in flight in an optimistic statement (which inserts before it locks), each would wait for the other:
    the pass gives up after ``lock_timeout`` and the batch is run again, as after a deadlock (_RETRIED);
    nothing of a rolled-back attempt was kept."""
    before = [(r.billable, r.reason) for r in limited]
    known: dict[tuple[int, str], tuple[str, bool, str]] = {}

    def attempt() -> set[tuple[int, str]]:
        for row, (billable, reason) in zip(limited, before, strict=True):  # decided afresh each time
            row.billable, row.reason, row.refusal = billable, reason, None
        known.clear()
        return _insert_debited_once(rows, limited, now, terms, known)

    return store.retrying_deadlocks(attempt), known


def _insert_debited_once(rows: list[Row], limited: list[Row], now: datetime, terms: Terms,
                         known: dict[tuple[int, str], tuple[str, bool, str]]) -> set[tuple[int, str]]:
    try:
        if connection.vendor == "postgresql":
            return _insert_booked(rows, limited, now, terms, known)
        with transaction.atomic():
            inserted = store.insert_rows(rows, received_at=now)
            debit = BatchDebit([usage_of(r) for r in limited if r.event.billable
                                and (r.customer_pk, r.event.event_id) in inserted], terms, lock=False)
            if debit.decide():
                raise _Refused
            debit.write()  # LedgerRefused if an account moved since it was read in a way that matters
            return inserted
    except (_Refused, LedgerRefused):
        known.clear()
    with transaction.atomic():
        debit = BatchDebit([usage_of(r) for r in limited if r.event.billable], terms, lock=True)  # waits its turn
        stored = set(store.stored_rows(limited))
        apply_refusals(limited, debit.decide(skip={r.index for r in limited
                                                    if (r.customer_pk, r.event.event_id) in stored}))
        postgresql = connection.vendor == "postgresql"
        if postgresql:
            # This pass takes the accounts before it inserts; an optimistic statement inserts before it
            # takes them. When one of our ids is in flight in such a statement, each waits for the other:
            # the insert gives up soon (and the batch runs again) rather than after deadlock_timeout. Only
            # the insert: waiting for the accounts behind other bookings is this pass's normal queue.
            with connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{_CAREFUL_LOCK_TIMEOUT_MS}ms'")
        inserted = store.insert_rows(rows, received_at=now)
        if postgresql:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        by_index = {r.index: (r.customer_pk, r.event.event_id) for r in limited}
        debit.write(stored=lambda index: by_index[index] in inserted)
        return inserted


def insert_held(rows: list[Row], limited: list[Row], now: datetime, terms: Terms | None
                 ) -> tuple[set[tuple[int, str]], dict[tuple[int, str], tuple[str, bool, str]]] | None:
    """A ledger outside the database (ledger.holds): decide the batch on the balances as read
    (BatchDebit, no locks), hold its debit in the ledger as one chain of pending transfers (the ledger
    checks the bounds, atomically), insert the events together with the outbox row of the holds' posts,
    then post them. None, with nothing held or stored, when the batch cannot go as a whole (an event
    over a limit, a bound taken by a concurrent batch, an id stored meanwhile): the caller then decides
    event by event. Returns what ``insert_debited`` does."""
    known = store.stored_rows(limited)
    debited = [r for r in limited if r.event.billable and (r.customer_pk, r.event.event_id) not in known]
    debit = BatchDebit([usage_of(r) for r in debited], terms, lock=False)
    if debit.decide():
        return None
    transfers: list[Any] = []
    debit.write(book=lambda booked, _expect: transfers.extend(booked))
    attempt = fingerprint_of(sorted((r.customer_pk, r.event.event_id, r.fingerprint) for r in debited))
    held = holds.holds_of(transfers, attempt)
    if not holds.place(held):
        return None
    posts = holds.posts_of(held)

    def insert_recorded() -> set[tuple[int, str]]:
        with transaction.atomic():
            inserted = store.insert_rows(rows, received_at=now)
            if any((r.customer_pk, r.event.event_id) not in inserted for r in debited):
                raise StoredMeanwhile(STORED_MEANWHILE)
            if posts:
                holds.record(posts)
            return inserted

    try:
        inserted = store.retrying_deadlocks(insert_recorded)
    except StoredMeanwhile:
        holds.void(held)
        return None
    except BaseException:
        with contextlib.suppress(Exception):
            holds.void(held)  # nothing was stored: free the room now rather than at the holds' timeout
        raise
    with contextlib.suppress(LedgerUnavailable):  # stored and recorded: the sweep posts them (ledger.holds.sweep)
        holds.post(posts)
    return inserted, known


def fingerprint_of(keys: list[tuple[int, str, str]]) -> str:
    """One digest of a batch's debited events (the holds' attempt key)."""
    digest = hashlib.blake2b(digest_size=16)
    for customer_pk, event_id, fp in keys:
        digest.update(f"{customer_pk}\x1f{event_id}\x1f{fp}\x1e".encode())
    return digest.hexdigest()


def _insert_booked(rows: list[Row], limited: list[Row], now: datetime, terms: Terms,
                   known: dict[tuple[int, str], tuple[str, bool, str]]) -> set[tuple[int, str]]:
    """The optimistic pass on PostgreSQL (see insert_debited): _Refused or LedgerRefused, with nothing
    kept, when it cannot be taken."""
    for _attempt in range(2):
        try:
            return _insert_booked_once(rows, limited, now, terms, known)
        except StoredMeanwhile:
            known.clear()
    return _insert_booked_once(rows, limited, now, terms, known)


def _insert_booked_once(rows: list[Row], limited: list[Row], now: datetime, terms: Terms,
                        known: dict[tuple[int, str], tuple[str, bool, str]]) -> set[tuple[int, str]]:
    known.update(store.stored_rows(limited))
    debited = [r for r in limited if r.event.billable and (r.customer_pk, r.event.event_id) not in known]
    debit = BatchDebit([usage_of(r) for r in debited], terms, lock=False)
    if debit.decide():
        raise _Refused
    inserted: set[tuple[int, str]] = set()

    def insert_and_book(transfers: list[Any], expect: Any) -> None:
        booking = get_ledger().booking(transfers, expect)
        inserted.update(store.insert_rows(rows, received_at=now, booking=booking, debited=debited))

    # In a caller's transaction (tests, a management command), a savepoint stands for the autocommit.
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        debit.write(book=insert_and_book)
    return inserted


def usage_of(r: Row, coverage: Coverage | None = None) -> EventUsage:
    return EventUsage(key=r.index, customer_pk=r.customer_pk, event_id=r.event.event_id, meter=r.meter,  # type: ignore[arg-type]
                      quantity=r.quantity, usage_at=r.usage_at, dimensions=r.event.dimensions, coverage=coverage)


def refused_before(reason: str) -> EventError:
    return EventError(402, reason.removeprefix("rejected_"), "This event was refused when first sent; a retry stays refused.")


def apply_refusals(rows: list[Row], refusals: dict[Any, Any]) -> None:
    """Mark refused rows not billable (reason ``rejected_<code>``), with their 402 (or 409) answer."""
    for row in rows:
        refusal = refusals.get(row.index)
        if refusal is None:
            continue
        if refusal.code == "idempotency_conflict":
            row.refusal = EventError(409, "idempotency_conflict", refusal.message)
            continue
        row.billable, row.reason = False, f"rejected_{refusal.code}"
        body = refusal.as_dict()
        row.refusal = EventError(402, refusal.code, refusal.message,
                                 extra={k: v for k, v in body.items() if k not in ("code", "message")})
