"""Step 3 of ingest, the limits: the batch's billable events of customers with a plan are debited in the
ledger before they are accepted (quota, spend cap, credits), decided by one engine (``BatchDebit``) and
booked with the insert (docs/ledger.md): in its statement or transaction (a ledger in the database), or
held, then posted around it (TigerBeetle). A batch that settles a reservation closes its holds first."""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction

from billing.common import locks
from billing.common.errors import DomainError
from billing.guardrails.errors import GuardrailsCode
from billing.guardrails.limits import REFUSAL_CODES, BatchDebit, Coverage, EventUsage, Refusal, SubscribedPlans
from billing.usage.ingest import store
from billing.usage.ingest.rows import Row
from billing.usage.ingest.store import StoredMeanwhile
from ledger.backends import get_ledger
from ledger.backends.base import LedgerRefused, LedgerUnavailable
from ledger.types import Transfer

_CAREFUL_LOCK_TIMEOUT_MS = 200
_OPTIMISTIC_TRIES = 3  # unserialized tries before a ledger outside the database serializes per customer
_SERIALIZED_TRIES = 10  # then 503 (retry): only bookings of other processes that never wait can be in the way
_BACKOFF_CAP_SECONDS = 0.05  # between tries (about 0.4 s in all before the 503)


def debit_and_store(rows: list[Row], limited: list[Row], reservation: Any, now: datetime, subscribed: SubscribedPlans | None
                    ) -> tuple[set[tuple[int, str]], dict[tuple[int, str], tuple[str, bool, str]], bool]:
    """Steps 3 and 4: the limits, then the insert. Returns the keys inserted, the stored rows (fingerprint,
    billable, reason) read on the way, and whether a stored refusal must be answered again (a retry of a
    refused event stays refused)."""
    if reservation is not None:
        return (*insert_as_a_batch(rows, limited, now, subscribed, _settling(rows, reservation, now)), True)
    if limited:
        return (*insert_as_a_batch(rows, limited, now, subscribed), True)
    if not rows:
        return set(), {}, False
    # one INSERT statement: atomic and, in autocommit, committed (durable) before it returns
    return store.retrying_deadlocks(lambda: store.insert_rows(rows, received_at=now)), {}, True


@dataclass
class _Settling:
    """A batch that settles a reservation: the transfers that close its holds (``prefix``, booked before the
    events), the quantity the posted quota hold covers for its own rows (``mine``, in order), and the
    covered quantity of those that were refused (given back after: a refused event consumes nothing)."""

    reservation: Any
    prefix: list[Transfer]
    covered: Decimal
    mine: set[int]
    refused_cover: Decimal = field(default=Decimal(0))

    def coverage(self) -> Coverage:
        return Coverage(quantity=self.covered)  # afresh for each try: taking it consumes it


def _settling(rows: list[Row], reservation: Any, now: datetime) -> _Settling:
    from billing.guardrails.reservations import settle_prefix

    mine = [r for r in rows if r.event.billable and r.customer_pk == reservation.customer_id
            and r.meter_pk == reservation.meter_id]
    prefix, covered = settle_prefix(reservation, sum((r.quantity for r in mine), Decimal(0)), now)
    return _Settling(reservation, prefix, covered, {r.index for r in mine})


def _settled(settling: _Settling | None) -> None:
    if settling is not None:
        from billing.guardrails.reservations import refund_refused_coverage

        refund_refused_coverage(settling.reservation, settling.refused_cover)


def insert_as_a_batch(rows: list[Row], limited: list[Row], now: datetime, subscribed: SubscribedPlans | None,
                      settling: _Settling | None = None
                      ) -> tuple[set[tuple[int, str]], dict[tuple[int, str], tuple[str, bool, str]]]:
    """Insert the batch and debit its limited events, both or neither. Returns the keys inserted, and the
    stored rows (fingerprint, billable, reason) read on the way, by key.

    First optimistically (``_booked_with_the_insert``): read which of the limited events are stored
    already (a retry is never debited again) and the customer's accounts, without locking anything;
    decide for the others (``BatchDebit``); then have the ledger book the batch's transfers with the
    insert (``book_with``), holding it to what the decision assumed (the SQL ledger: every bounded account
    still holds the batch and every usage counter is still in the tier the events were priced in, in one
    autocommitted statement that inserts the events and books the debit; TigerBeetle: the bounds, held,
    then the insert with its outbox row, then the posts; docs/ledger.md), and every debited event is
    inserted by it. When the ledger refuses the booking (the accounts moved meanwhile) nothing was kept,
    and the batch is decided again: under locks on the SQL ledger (``_decided_under_locks``), where it
    also goes when an event is over a limit (raw events are append-only: a refused event is stored as
    refused, decided on accounts that cannot move); on TigerBeetle, whose bounds are checked by the ledger
    itself, refusals are kept, and after a few tries the batch waits its turn behind the customer's
    other bookings (``_serialized``). A batch rolled back to break a deadlock, or whose careful pass gave
    up waiting for a lock, is run again whole (``store.retrying_deadlocks``)."""
    before = [(r.billable, r.reason) for r in limited]
    known: dict[tuple[int, str], tuple[str, bool, str]] = {}
    ledger = get_ledger()
    shares_database = ledger.shares_database

    def afresh() -> None:
        for row, (billable, reason) in zip(limited, before, strict=True):
            row.billable, row.reason, row.refusal = billable, reason, None
        known.clear()

    def attempt() -> set[tuple[int, str]]:
        afresh()
        if settling is not None:
            if shares_database:  # the holds closed in the transaction that books the events
                return _decided_under_locks(rows, limited, now, subscribed, settling)
            _close_holds(settling.prefix)
        with contextlib.ExitStack() as stack:
            for n in range(_OPTIMISTIC_TRIES + (0 if shares_database else _SERIALIZED_TRIES)):
                if n == _OPTIMISTIC_TRIES:
                    stack.enter_context(_serialized({r.customer_pk for r in limited}))
                try:
                    # a single event is seldom a retry: its first try skips the read of what is stored (the
                    # insert refuses to debit an event stored already: ``StoredMeanwhile``, then read)
                    return _booked_with_the_insert(rows, limited, now, subscribed, known, settling,
                                                   keep_refusals=not shares_database,
                                                   read_stored=n > 0 or len(limited) > 1)
                except (StoredMeanwhile, _ReadStored):  # worth another optimistic try, which will see it stored
                    afresh()
                except (_Refused, LedgerRefused):
                    afresh()
                    if shares_database:
                        break
                    _back_off(n)  # let the booking that moved the accounts (or holds a value) finish
        if shares_database:
            return _decided_under_locks(rows, limited, now, subscribed)
        raise LedgerUnavailable("the customer's accounts kept moving under the batch; retry it")

    inserted = store.retrying_deadlocks(attempt)
    if settling is not None and not shares_database:
        _settled(settling)
    return inserted, known


class _Refused(Exception):
    """The optimistic pass found an event over a limit: decide again, nothing kept."""


class _ReadStored(Exception):
    """A refusal decided without reading which events are stored: a refusal kept is answered, so the
    batch is decided again after that read (a retried event that was accepted answers as a duplicate)."""


def _booked_with_the_insert(rows: list[Row], limited: list[Row], now: datetime, subscribed: SubscribedPlans | None,
                            known: dict[tuple[int, str], tuple[str, bool, str]], settling: _Settling | None,
                            *, keep_refusals: bool, read_stored: bool = True) -> set[tuple[int, str]]:
    if read_stored:
        known.update(store.stored_rows(limited))
    debited = [r for r in limited if r.event.billable and (r.customer_pk, r.event.event_id) not in known]
    usages = _usages(debited, settling)
    ledger = get_ledger()
    # keep_refusals: a ledger outside the database releases expired holds itself; in the database, every
    # refusal of this pass is decided again under locks (which release them first): a peek is enough.
    # fold: new accounts are created by the booking
    debit = BatchDebit(usages, subscribed, lock=False, fold=True, peek=not keep_refusals)
    refusals = debit.decide()
    if refusals:
        if not keep_refusals:
            raise _Refused
        if not read_stored:
            raise _ReadStored
        apply_refusals(debited, refusals)
        debited = [r for r in debited if r.billable]
    _note_refused_cover(settling, usages, refusals)
    transfers, expect = debit.booking()
    # the attempt's key names a ledger outside the database's holds; a ledger in it books in the insert's
    # own transaction, where nothing outlives a rolled-back attempt
    attempt = None if ledger.shares_database else fingerprint_of(
        sorted((r.customer_pk, r.event.event_id, r.fingerprint) for r in debited))
    fold = debit.fold
    # the events read as stored cannot be inserted (events are never deleted): the insert skips them
    fresh = [r for r in rows if (r.customer_pk, r.event.event_id) not in known] if known else rows
    inserted: set[tuple[int, str]] = ledger.book_with(
        transfers, expect, store.EventInsert(fresh, now, debited), attempt,
        new_accounts=fold.accounts if fold else (), allocations=fold.allocations if fold else ())
    if fold is not None:
        fold.remember()
    return inserted


def _decided_under_locks(rows: list[Row], limited: list[Row], now: datetime, subscribed: SubscribedPlans | None,
                         settling: _Settling | None = None) -> set[tuple[int, str]]:
    """The careful pass (a ledger in the database): lock the accounts, read which ids are stored, decide,
    insert (the refused events as not billable), debit what was inserted, in one transaction. It locks
    before it inserts; when one of its ids is in flight in an optimistic statement (which inserts before
    it locks), each would wait for the other: the insert gives up after ``lock_timeout`` and the batch is
    run again, as after a deadlock; nothing of a rolled-back attempt was kept."""
    with transaction.atomic():
        if settling is not None:
            _close_holds(settling.prefix)
        stored = set(store.stored_rows(limited))
        usages = _usages([r for r in limited if r.event.billable], settling)
        debit = BatchDebit(usages, subscribed, lock=True)  # waits its turn
        refusals = debit.decide(skip={r.index for r in limited if (r.customer_pk, r.event.event_id) in stored})
        apply_refusals(limited, refusals)
        _note_refused_cover(settling, usages, refusals)
        postgresql = connection.vendor == "postgresql"
        if postgresql:  # only the insert: waiting for the accounts behind other bookings is this pass's queue
            with connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{_CAREFUL_LOCK_TIMEOUT_MS}ms'")
        inserted = store.insert_rows(rows, received_at=now)
        if postgresql:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        debit.write(stored={r.index for r in limited if (r.customer_pk, r.event.event_id) in inserted})
        _settled(settling)
        return inserted


def _usages(rows: list[Row], settling: _Settling | None) -> list[EventUsage]:
    if settling is None:
        return [usage_of(r) for r in rows]
    coverage = settling.coverage()
    return [usage_of(r, coverage if r.index in settling.mine else None) for r in rows]


def _note_refused_cover(settling: _Settling | None, usages: list[EventUsage], refusals: dict[Any, Refusal]) -> None:
    if settling is not None:
        settling.refused_cover = sum((u.covered_quantity for u in usages if u.key in refusals), Decimal(0))


def _close_holds(prefix: list[Transfer]) -> None:
    """Book a reservation's post and voids (idempotent ids: a retried settle finds them booked)."""
    from billing.guardrails.reservations import check_closed

    if prefix:
        check_closed(prefix, get_ledger().create_transfers(prefix))


def _back_off(tries: int) -> None:
    """Exponential, jittered, capped: a booking in flight takes a few milliseconds to commit and post."""
    time.sleep(min(_BACKOFF_CAP_SECONDS, 0.001 * 2 ** tries) * random.uniform(0.5, 1.5))  # noqa: S311 (jitter)


def _serialized(customer_pks: set[int]) -> contextlib.AbstractContextManager[None]:
    """Book one customer's batches one at a time (a ledger outside the database, after tries that kept
    meeting moved accounts): held across the ledger calls and the insert's own transaction."""
    return locks.one_at_a_time(f"tollgate-limits:{pk}" for pk in customer_pks)


def fingerprint_of(keys: list[tuple[int, str, str]]) -> str:
    """One digest of a batch's debited events (the attempt's key: a retried batch finds what it left)."""
    digest = hashlib.blake2b(digest_size=16)
    for customer_pk, event_id, fp in keys:
        digest.update(f"{customer_pk}\x1f{event_id}\x1f{fp}\x1e".encode())
    return digest.hexdigest()


_NONE_COVERED = Decimal(0)


def usage_of(r: Row, coverage: Coverage | None = None) -> EventUsage:
    event = r.event  # positional: once per limited event (EventUsage's field order)
    return EventUsage(r.index, r.customer_pk, event.event_id, r.meter, r.quantity, r.usage_at,  # type: ignore[arg-type]
                      event.dimensions, coverage, _NONE_COVERED, r.run_id, r.project_pk, r.api_key_pk)


def refused_before(reason: str) -> DomainError | None:
    """The answer to a retry of an event stored as refused (reason ``rejected_<code>``); None when the reason
    names no refusal (a client's own reason for a non-billable event)."""
    code = reason.removeprefix("rejected_")
    if code not in REFUSAL_CODES:
        return None
    return DomainError(GuardrailsCode(code), "This event was refused when first sent; a retry stays refused.")


def apply_refusals(rows: list[Row], refusals: dict[Any, Refusal]) -> None:
    """Mark refused rows not billable (reason ``rejected_<code>``), with their 402 answer (a conflicting
    body is the event table's call: ``compare``'s 409 wins over it, ``refused_or``)."""
    for row in rows:
        refusal = refusals.get(row.index)
        if refusal is None:
            continue
        row.billable, row.reason = False, f"rejected_{refusal.code}"
        row.refusal = refusal.as_error()
