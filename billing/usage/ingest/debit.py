"""Step 3 of ingest, the limits: the batch's billable events of customers with a plan are debited in the
ledger before they are accepted (quota, spend cap, credits), in one of three ways (docs/ledger.md):
together with the insert (a ledger in the database), held then posted around the insert (TigerBeetle),
or event by event before it (a batch that cannot go as a whole, and reservations being settled)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from billing.guardrails.limits import BatchDebit, Coverage, EventUsage, Refusal, Terms, enforce
from billing.usage.contract import EventError
from billing.usage.ingest import store
from billing.usage.ingest.rows import Row
from billing.usage.ingest.store import StoredMeanwhile
from ledger.backends import get_ledger
from ledger.backends.base import LedgerRefused

_CAREFUL_LOCK_TIMEOUT_MS = 200

def debit_and_store(rows: list[Row], limited: list[Row], reservation: Any, now: datetime, terms: Terms | None
                    ) -> tuple[set[tuple[int, str]], dict[tuple[int, str], tuple[str, bool, str]], bool]:
    """Steps 3 and 4: the limits, then the insert, in the way the ledger allows. Returns the keys inserted,
    the stored rows (fingerprint, billable, reason) read on the way, and whether a stored refusal must be
    answered again (a retry of a refused event, in the batch way: the per-event way marks it itself).

    A batch is decided as a whole on the balances as read and booked with the insert (``insert_as_a_batch``:
    one statement on the SQL ledger; held, then posted, on TigerBeetle). A batch that cannot go as a whole
    is decided again under locks (the SQL ledger) or event by event (TigerBeetle: one linked chain per
    event, the ledger deciding), and so are the events that settle a reservation."""
    ledger = get_ledger()
    if limited and reservation is None and (ledger.shares_database or settings.LEDGER_HELD_BATCHES):
        return (*insert_as_a_batch(rows, limited, now, terms), True)
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


class _PerEvent(Exception):
    """A ledger outside the database could not take the batch as a whole: decide it event by event."""


def insert_as_a_batch(rows: list[Row], limited: list[Row], now: datetime, terms: Terms | None
                      ) -> tuple[set[tuple[int, str]], dict[tuple[int, str], tuple[str, bool, str]]]:
    """Insert the batch and debit its limited events, both or neither. Returns the keys inserted, and the
    stored rows (fingerprint, billable, reason) read on the way, by key.

    First optimistically (``_booked_with_the_insert``): read which of the limited events are stored
    already (a retry is never debited again) and the customer's accounts, without locking anything;
    decide for the others (``BatchDebit``); then have the ledger book the batch's transfers with the
    insert (``book_with``), holding it to what the decision assumed: every bounded account still holds
    the batch, every usage counter is still in the tier the events were priced in (the SQL ledger: one
    autocommitted statement that inserts the events and books the debit; TigerBeetle: the debit held,
    then the insert with its outbox row, then the posts; docs/ledger.md), and every debited event is
    inserted by it. Raw events are append-only, so a refused event cannot be marked after its insert:
    when an event is over a limit, or the ledger refuses the booking (accounts moved meanwhile), nothing
    was kept, and the batch is decided again: under locks on the SQL ledger (``_decided_under_locks``),
    event by event on TigerBeetle (``enforce_limits``). A batch rolled back to break a deadlock, or whose
    careful pass gave up waiting for a lock, is run again whole (``store.retrying_deadlocks``)."""
    before = [(r.billable, r.reason) for r in limited]
    known: dict[tuple[int, str], tuple[str, bool, str]] = {}
    shares_database = get_ledger().shares_database

    def attempt() -> set[tuple[int, str]]:
        for row, (billable, reason) in zip(limited, before, strict=True):  # decided afresh each time
            row.billable, row.reason, row.refusal = billable, reason, None
        known.clear()
        for _try in range(3):
            try:
                return _booked_with_the_insert(rows, limited, now, terms, known)
            except StoredMeanwhile:  # worth another optimistic try, which will see it stored
                known.clear()
            except (_Refused, LedgerRefused):
                break
        known.clear()
        if shares_database:
            return _decided_under_locks(rows, limited, now, terms)
        raise _PerEvent

    try:
        return store.retrying_deadlocks(attempt), known
    except _PerEvent:
        enforce_limits(limited, None, now, terms)
        return store.retrying_deadlocks(lambda: store.insert_rows(rows, received_at=now)), {}


class _Refused(Exception):
    """The optimistic pass found an event over a limit: decide again, nothing kept."""


def _booked_with_the_insert(rows: list[Row], limited: list[Row], now: datetime, terms: Terms | None,
                            known: dict[tuple[int, str], tuple[str, bool, str]]) -> set[tuple[int, str]]:
    known.update(store.stored_rows(limited))
    debited = [r for r in limited if r.event.billable and (r.customer_pk, r.event.event_id) not in known]
    debit = BatchDebit([usage_of(r) for r in debited], terms, lock=False)
    if debit.decide():
        raise _Refused
    transfers, expect = debit.booking()
    attempt = fingerprint_of(sorted((r.customer_pk, r.event.event_id, r.fingerprint) for r in debited))
    inserted: set[tuple[int, str]] = get_ledger().book_with(transfers, expect, store.EventInsert(rows, now, debited),
                                                            attempt)
    return inserted


def _decided_under_locks(rows: list[Row], limited: list[Row], now: datetime, terms: Terms | None
                         ) -> set[tuple[int, str]]:
    """The careful pass (a ledger in the database): lock the accounts, read which ids are stored, decide,
    insert (the refused events as not billable), debit what was inserted, in one transaction. It locks
    before it inserts; when one of its ids is in flight in an optimistic statement (which inserts before
    it locks), each would wait for the other: the insert gives up after ``lock_timeout`` and the batch is
    run again, as after a deadlock; nothing of a rolled-back attempt was kept."""
    with transaction.atomic():
        debit = BatchDebit([usage_of(r) for r in limited if r.event.billable], terms, lock=True)  # waits its turn
        stored = set(store.stored_rows(limited))
        apply_refusals(limited, debit.decide(skip={r.index for r in limited
                                                    if (r.customer_pk, r.event.event_id) in stored}))
        postgresql = connection.vendor == "postgresql"
        if postgresql:  # only the insert: waiting for the accounts behind other bookings is this pass's queue
            with connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{_CAREFUL_LOCK_TIMEOUT_MS}ms'")
        inserted = store.insert_rows(rows, received_at=now)
        if postgresql:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        debit.write(stored={r.index for r in limited if (r.customer_pk, r.event.event_id) in inserted})
        return inserted


def fingerprint_of(keys: list[tuple[int, str, str]]) -> str:
    """One digest of a batch's debited events (the attempt's key: a retried batch finds what it left)."""
    digest = hashlib.blake2b(digest_size=16)
    for customer_pk, event_id, fp in keys:
        digest.update(f"{customer_pk}\x1f{event_id}\x1f{fp}\x1e".encode())
    return digest.hexdigest()


def usage_of(r: Row, coverage: Coverage | None = None) -> EventUsage:
    return EventUsage(key=r.index, customer_pk=r.customer_pk, event_id=r.event.event_id, meter=r.meter,  # type: ignore[arg-type]
                      quantity=r.quantity, usage_at=r.usage_at, dimensions=r.event.dimensions, coverage=coverage)


def refused_before(reason: str) -> EventError:
    return EventError(402, reason.removeprefix("rejected_"), "This event was refused when first sent; a retry stays refused.")


def apply_refusals(rows: list[Row], refusals: dict[Any, Refusal]) -> None:
    """Mark refused rows not billable (reason ``rejected_<code>``), with their 402 answer (a conflicting
    body is the event table's call: ``compare``'s 409 wins over it, ``refused_or``)."""
    for row in rows:
        refusal = refusals.get(row.index)
        if refusal is None:
            continue
        row.billable, row.reason = False, f"rejected_{refusal.code}"
        body = refusal.as_dict()
        row.refusal = EventError(402, refusal.code, refusal.message,
                                 extra={k: v for k, v in body.items() if k not in ("code", "message")})
