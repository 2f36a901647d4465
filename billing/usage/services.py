"""Ingest: the one place usage events are written.

Exactly once: the database's unique constraint on (customer, event_id) decides, through
``INSERT ... ON CONFLICT DO NOTHING RETURNING``; every event that was not inserted is compared with
the stored row by fingerprint: same body -> ``duplicate`` (nothing counted twice), another body ->
``conflict`` (409). Concurrent retries of one event therefore store one row whatever the
interleaving. The insert is committed before the caller answers (durable before any 2xx).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from billing.catalog.models import Meter
from billing.common.auth import Principal
from billing.customers.models import Project
from billing.guardrails.enforcement import BatchDebit, Coverage, EventUsage, Terms, enforce
from billing.invoicing.periods import EPOCH, closed_until_cached
from billing.usage.contract import CleanEvent, EventError, clean_event, decode_event, fingerprint
from billing.usage.models import UsageEvent
from ledger import holds
from ledger.backends import get_ledger
from ledger.backends.base import Booking, LedgerRefused, LedgerUnavailable

ACCEPTED, DUPLICATE, REJECTED = "accepted", "duplicate", "rejected"
T = TypeVar("T")


@dataclass(slots=True)
class IngestResult:
    event_id: str | None
    status: str
    error: EventError | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "status": self.status}
        if self.error is not None:
            out["error"] = self.error.as_dict()
        return out


@dataclass(slots=True)
class _Row:
    index: int
    event: CleanEvent
    customer_pk: int
    project_pk: int | None
    meter_pk: int
    quantity: Decimal
    usage_at: datetime
    run_id: str
    fingerprint: str
    billable: bool = True
    reason: str = ""
    refusal: EventError | None = None  # a hard limit said no: stored for audit as not billable, answered 402
    meter: Meter | None = None
    late: bool = False  # counts in a closed period: 422 period_closed unless it is a retry of a stored event


@dataclass(slots=True)
class _Cust:
    pk: int
    subscribed: bool  # has any subscription: only then can a plan limit apply


@dataclass
class _Lookups:
    customers: dict[str, _Cust] = field(default_factory=dict)
    meters: dict[str, Meter] = field(default_factory=dict)
    projects: dict[tuple[int, str], int] = field(default_factory=dict)
    originals: dict[tuple[int, str], tuple[int, datetime, bool]] = field(default_factory=dict)  # meter, usage_at, billable
    closed_until: datetime = EPOCH  # usage before this instant belongs to a closed period
    terms: Terms | None = None  # the customers' subscriptions and rate cards, read with them


def events_ingest(
    *, principal: Principal, raw_events: Sequence[bytes | msgspec.Raw], now: datetime | None = None,
    reservation: Any = None,
) -> list[IngestResult]:
    """Validate and store a batch; one result per input, in order. One bad event never sinks the rest."""
    now = now or timezone.now()
    max_future = timedelta(seconds=settings.TOLLGATE_MAX_FUTURE_SECONDS)
    results: list[IngestResult | None] = [None] * len(raw_events)
    cleaned: list[tuple[int, CleanEvent]] = []
    for index, raw in enumerate(raw_events):
        try:
            event = clean_event(decode_event(raw), now=now, max_future=max_future)
        except EventError as error:
            results[index] = IngestResult(_event_id_of(raw), REJECTED, error)
            continue
        cleaned.append((index, event))

    lookups = _load_lookups(cleaned)
    rows: list[_Row] = []
    repeats: list[_Row] = []  # the same id again later in this batch: judged against what is stored
    in_batch: dict[tuple[int, str], _Row] = {}
    late: list[_Row] = []  # for a closed period: only a retry of a stored event is answered (200/409)
    for index, event in cleaned:
        try:
            row = _resolve(event, index, principal, lookups, in_batch)
        except EventError as error:
            results[index] = IngestResult(event.event_id, REJECTED, error)
            continue
        if row.late:
            late.append(row)
            continue
        if (row.customer_pk, event.event_id) in in_batch:
            repeats.append(row)
            continue
        in_batch[(row.customer_pk, event.event_id)] = row
        rows.append(row)

    if late:
        stored = _stored_rows(late)
        for row in late:
            key = (row.customer_pk, row.event.event_id)
            results[row.index] = _compare(row.event.event_id, stored[key][0], row.fingerprint) if key in stored else (
                IngestResult(row.event.event_id, REJECTED, EventError(
                    422, "period_closed",
                    f"The billing period holding {row.usage_at.isoformat()} is closed and invoiced; "
                    "send a correction dated in the open period instead.", {"timestamp": ["Period closed."]})))
    subscribed = {c.pk for c in lookups.customers.values() if c.subscribed}
    limited = [r for r in rows if r.customer_pk in subscribed]
    # A ledger in the same database is debited in the insert's own transaction (one transfer per account
    # and batch); any other ledger, or the settling of a reservation, first and per event (ids from events).
    # A ledger in the same database is debited in the insert's own transaction (one transfer per account
    # and batch); one outside it (TigerBeetle) holds the batch's debit first and posts it once the insert
    # committed (ledger.holds); the settling of a reservation, or a batch those cannot take as a whole,
    # goes first and per event (ids from events).
    ledger = get_ledger()
    together = bool(limited) and reservation is None and ledger.shares_database
    held = bool(limited) and reservation is None and not ledger.shares_database and settings.LEDGER_HELD_BATCHES
    inserted_held: tuple[set[tuple[int, str]], dict[tuple[int, str], tuple[str, bool, str]]] | None = None
    if held:
        inserted_held = _insert_held(rows, limited, now, lookups.terms)
    if not together and inserted_held is None and (reservation is not None or limited):
        _enforce_limits(limited, reservation, now, lookups.terms)
    if rows:
        # Otherwise one INSERT statement: atomic and, in autocommit, committed (durable) before it returns.
        inserted, known = _insert_debited(rows, limited, now, lookups.terms) if together else inserted_held or (
            _retrying_deadlocks(lambda: _insert_rows(rows, received_at=now)), {})
        # What the database holds for each id now: ours where we inserted, the earlier row otherwise (read
        # before the insert for the ids the debit had to leave out, after it for the rest).
        winner: dict[tuple[int, str], str] = {}
        known.update(_stored_rows([r for r in rows if (r.customer_pk, r.event.event_id) not in inserted
                                   and (r.customer_pk, r.event.event_id) not in known]))
        for key, (fp, billable, reason) in known.items():
            winner[key] = fp
            if (together or held) and not billable and reason.startswith("rejected_") and key in in_batch:
                in_batch[key].refusal = _refused_before(reason)  # a retry of a refused event stays refused
        for row in rows:
            key = (row.customer_pk, row.event.event_id)
            if key in inserted:
                winner[key] = row.fingerprint
                results[row.index] = _refused_or(row, IngestResult(row.event.event_id, ACCEPTED))
            else:
                results[row.index] = _refused_or(row, _compare(row.event.event_id, winner.get(key, ""), row.fingerprint))
        for row in repeats:
            key = (row.customer_pk, row.event.event_id)
            row.refusal = in_batch[key].refusal  # the same event again shares the first one's fate
            results[row.index] = _refused_or(row, _compare(row.event.event_id, winner.get(key, ""), row.fingerprint))
        if subscribed:  # soft-limit alerts: one check queued per customer, after commit (billing.guardrails.alerts)
            from billing.guardrails.alerts import alerts_check_soon

            alerts_check_soon(customer_pks={r.customer_pk for r in rows if r.customer_pk in subscribed})
    return [r for r in results if r is not None]


def _refused_or(row: _Row, result: IngestResult) -> IngestResult:
    """A refused event is answered with its 402 unless its id turned out to hold another body (409)."""
    if row.refusal is None or (result.error is not None and result.error.code == "idempotency_conflict"):
        return result
    return IngestResult(row.event.event_id, REJECTED, row.refusal)


def _enforce_limits(rows: list[_Row], reservation: Any, now: datetime, terms: Any) -> None:
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
    stored = _stored_outcomes(rows)
    for row in rows:
        outcome = stored.get((row.customer_pk, row.event.event_id))
        if outcome is not None and outcome.startswith("rejected_"):
            row.refusal = _refused_before(outcome)
    usages = [
        _usage(r, coverage if reservation is not None and r.customer_pk == reservation.customer_id
               and r.meter_pk == reservation.meter_id else None)
        for r in rows if r.event.billable and (r.customer_pk, r.event.event_id) not in stored
    ]
    refusals = enforce(usages, prefix=prefix, terms=terms)
    if reservation is not None:
        from billing.guardrails.reservations import refund_refused_coverage

        refund_refused_coverage(reservation, sum((u.covered_quantity for u in usages if u.key in refusals), Decimal(0)))
    _apply_refusals(rows, refusals)


class _Refused(Exception):
    """The optimistic pass of _insert_debited found an event over a limit: roll back and decide first."""


def _insert_debited(rows: list[_Row], limited: list[_Row], now: datetime, terms: Any
                    ) -> tuple[set[tuple[int, str]], dict[tuple[int, str], tuple[str, bool, str]]]:
    """Insert the batch and debit its limited events in one transaction (a ledger that shares the
    database: billing.guardrails.enforcement.BatchDebit). Returns the keys inserted, and the stored rows
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

    return _retrying_deadlocks(attempt), known


_CAREFUL_LOCK_TIMEOUT_MS = 200
_RETRIED = {"40P01", "55P03"}  # deadlock_detected; lock_not_available (the careful pass's lock_timeout)


def _retrying_deadlocks(write: Callable[[], T]) -> T:
    """``write()``, again when PostgreSQL rolled it back to break a deadlock, or when the careful pass of
    a limited batch gave up waiting for a lock (see _insert_debited_once). Rows go in in one order, so
    two inserts no longer deadlock each other, but the careful pass may still meet an optimistic batch
    the other way round. Whatever was rolled back was rolled back whole, so running it again is safe."""
    for attempt in range(4):
        try:
            return write()
        except OperationalError as error:
            if attempt == 3 or getattr(error.__cause__, "sqlstate", None) not in _RETRIED:
                raise
    raise AssertionError("unreachable")


def _insert_debited_once(rows: list[_Row], limited: list[_Row], now: datetime, terms: Terms,
                         known: dict[tuple[int, str], tuple[str, bool, str]]) -> set[tuple[int, str]]:
    try:
        if connection.vendor == "postgresql":
            return _insert_booked(rows, limited, now, terms, known)
        with transaction.atomic():
            inserted = _insert_rows(rows, received_at=now)
            debit = BatchDebit([_usage(r) for r in limited if r.event.billable
                                and (r.customer_pk, r.event.event_id) in inserted], terms, lock=False)
            if debit.decide():
                raise _Refused
            debit.write()  # LedgerRefused if an account moved since it was read in a way that matters
            return inserted
    except (_Refused, LedgerRefused):
        known.clear()
    with transaction.atomic():
        debit = BatchDebit([_usage(r) for r in limited if r.event.billable], terms, lock=True)  # waits its turn
        stored = set(_stored_rows(limited))
        _apply_refusals(limited, debit.decide(skip={r.index for r in limited
                                                    if (r.customer_pk, r.event.event_id) in stored}))
        postgresql = connection.vendor == "postgresql"
        if postgresql:
            # This pass takes the accounts before it inserts; an optimistic statement inserts before it
            # takes them. When one of our ids is in flight in such a statement, each waits for the other:
            # the insert gives up soon (and the batch runs again) rather than after deadlock_timeout. Only
            # the insert: waiting for the accounts behind other bookings is this pass's normal queue.
            with connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{_CAREFUL_LOCK_TIMEOUT_MS}ms'")
        inserted = _insert_rows(rows, received_at=now)
        if postgresql:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        by_index = {r.index: (r.customer_pk, r.event.event_id) for r in limited}
        debit.write(stored=lambda index: by_index[index] in inserted)
        return inserted


def _insert_held(rows: list[_Row], limited: list[_Row], now: datetime, terms: Terms | None
                 ) -> tuple[set[tuple[int, str]], dict[tuple[int, str], tuple[str, bool, str]]] | None:
    """A ledger outside the database (ledger.holds): decide the batch on the balances as read
    (BatchDebit, no locks), hold its debit in the ledger as one chain of pending transfers (the ledger
    checks the bounds, atomically), insert the events together with the outbox row of the holds' posts,
    then post them. None, with nothing held or stored, when the batch cannot go as a whole (an event
    over a limit, a bound taken by a concurrent batch, an id stored meanwhile): the caller then decides
    event by event. Returns what ``_insert_debited`` does."""
    known = _stored_rows(limited)
    debited = [r for r in limited if r.event.billable and (r.customer_pk, r.event.event_id) not in known]
    debit = BatchDebit([_usage(r) for r in debited], terms, lock=False)
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
            inserted = _insert_rows(rows, received_at=now)
            if any((r.customer_pk, r.event.event_id) not in inserted for r in debited):
                raise _StoredMeanwhile(_STORED_MEANWHILE)
            if posts:
                holds.record(posts)
            return inserted

    try:
        inserted = _retrying_deadlocks(insert_recorded)
    except _StoredMeanwhile:
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


# (SQL string literals in _insert_rows_postgresql: no quotes in them)
_BOOKING_REFUSED = "the ledger refused the booking of the batch: its accounts moved since they were read"
_STORED_MEANWHILE = "another request stored one of the events of the batch since it read which are stored"


class _StoredMeanwhile(LedgerRefused):
    """The one statement of _insert_booked kept nothing: an event it was to debit was stored by another
    request after the batch read which are stored (a client's retry in flight). Worth one more optimistic
    pass, which will see it stored: the careful pass would wait for the account locks first."""


def _insert_booked(rows: list[_Row], limited: list[_Row], now: datetime, terms: Terms,
                   known: dict[tuple[int, str], tuple[str, bool, str]]) -> set[tuple[int, str]]:
    """The optimistic pass on PostgreSQL (see _insert_debited): _Refused or LedgerRefused, with nothing
    kept, when it cannot be taken."""
    for _attempt in range(2):
        try:
            return _insert_booked_once(rows, limited, now, terms, known)
        except _StoredMeanwhile:
            known.clear()
    return _insert_booked_once(rows, limited, now, terms, known)


def _insert_booked_once(rows: list[_Row], limited: list[_Row], now: datetime, terms: Terms,
                        known: dict[tuple[int, str], tuple[str, bool, str]]) -> set[tuple[int, str]]:
    known.update(_stored_rows(limited))
    debited = [r for r in limited if r.event.billable and (r.customer_pk, r.event.event_id) not in known]
    debit = BatchDebit([_usage(r) for r in debited], terms, lock=False)
    if debit.decide():
        raise _Refused
    inserted: set[tuple[int, str]] = set()

    def insert_and_book(transfers: list[Any], expect: Any) -> None:
        booking = get_ledger().booking(transfers, expect)
        inserted.update(_insert_rows(rows, received_at=now, booking=booking, debited=debited))

    # In a caller's transaction (tests, a management command), a savepoint stands for the autocommit.
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        debit.write(book=insert_and_book)
    return inserted


def _usage(r: _Row, coverage: Coverage | None = None) -> EventUsage:
    return EventUsage(key=r.index, customer_pk=r.customer_pk, event_id=r.event.event_id, meter=r.meter,  # type: ignore[arg-type]
                      quantity=r.quantity, usage_at=r.usage_at, dimensions=r.event.dimensions, coverage=coverage)


def _refused_before(reason: str) -> EventError:
    return EventError(402, reason.removeprefix("rejected_"), "This event was refused when first sent; a retry stays refused.")


def _apply_refusals(rows: list[_Row], refusals: dict[Any, Any]) -> None:
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


_METERS: dict[str, Meter] = {}


def meters_cached(keys: set[str]) -> dict[str, Meter]:
    """Meters by key, kept in process once seen: a meter is never deleted (events protect it) and its
    key and aggregation never change, so a cached meter cannot be stale in any way ingest relies on.
    Unknown keys are always asked of the database, so a new meter is usable at once."""
    missing = keys - _METERS.keys()
    if missing:
        for meter in Meter.objects.filter(key__in=missing):
            _METERS[meter.key] = meter
    return {key: _METERS[key] for key in keys if key in _METERS}


def _event_id_of(raw: bytes | msgspec.Raw) -> str | None:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    event_id = value.get("event_id") if isinstance(value, dict) else None
    return event_id if isinstance(event_id, str) else None


def _compare(event_id: str, stored: str, incoming: str) -> IngestResult:
    if stored == incoming:
        return IngestResult(event_id, DUPLICATE)
    return IngestResult(
        event_id,
        REJECTED,
        EventError(409, "idempotency_conflict", f"event_id '{event_id}' was already used with a different body."),
    )


def _load_lookups(cleaned: list[tuple[int, CleanEvent]]) -> _Lookups:
    lookups = _Lookups()
    if not cleaned:
        return lookups
    lookups.closed_until = closed_until_cached()
    customer_ids = {e.customer for _, e in cleaned}
    # One round trip for the customers, whether each has a subscription (only then can a limit apply),
    # and the terms the limits are read from (the ingest hot path).
    customers, lookups.terms = Terms.of_customers(customer_ids)
    lookups.customers = {external_id: _Cust(pk, subscribed) for external_id, (pk, subscribed) in customers.items()}
    lookups.meters = meters_cached({e.meter for _, e in cleaned})
    project_keys = {e.project for _, e in cleaned if e.project}
    if project_keys:
        for pk, customer_pk, key in Project.objects.filter(
            key__in=project_keys, customer__external_id__in=customer_ids
        ).values_list("pk", "customer_id", "key"):
            lookups.projects[(customer_pk, key)] = pk
    originals = {e.corrects for _, e in cleaned if e.corrects}
    if originals:
        for customer_pk, event_id, meter_pk, usage_at, billable in UsageEvent.objects.filter(
            event_id__in=originals, customer__external_id__in=customer_ids
        ).values_list("customer_id", "event_id", "meter_id", "usage_at", "billable"):
            lookups.originals[(customer_pk, event_id)] = (meter_pk, usage_at, billable)
    return lookups


def _resolve(
    event: CleanEvent, index: int, principal: Principal, lookups: _Lookups, in_batch: dict[tuple[int, str], _Row]
) -> _Row:
    customer = lookups.customers.get(event.customer)
    if principal.customer_id is not None and (customer is None or customer.pk != principal.customer_id):
        # Same answer whether or not that customer exists: nothing about other tenants leaks.
        raise EventError(403, "customer_forbidden", "This key is restricted to another customer.")
    if customer is None:
        raise EventError(422, "unknown_customer", f"No customer '{event.customer}'.", {"customer": ["Unknown customer."]})
    meter = lookups.meters.get(event.meter)
    if meter is None:
        raise EventError(422, "unknown_meter", f"No meter '{event.meter}'.", {"meter": ["Unknown meter."]})
    project_pk = None
    if event.project is not None:
        project_pk = lookups.projects.get((customer.pk, event.project))
        if project_pk is None:
            raise EventError(422, "unknown_project", f"Customer '{event.customer}' has no project '{event.project}'.",
                             {"project": ["Unknown project."]})
    quantity = event.quantity
    if quantity is None:
        if meter.aggregation != Meter.Aggregation.COUNT:
            raise EventError(422, "validation_error", "The event is not valid.",
                             {"quantity": ["Required (only count meters default to 1)."]})
        quantity = Decimal(1)
    usage_at = event.timestamp
    if event.corrects is not None:
        if not meter.correctable:
            raise EventError(422, "correction_not_supported",
                             f"Meter '{meter.key}' aggregates '{meter.aggregation}': only sum and count meters take corrections.")
        original = lookups.originals.get((customer.pk, event.corrects))
        if original is None and (customer.pk, event.corrects) in in_batch:
            earlier = in_batch[(customer.pk, event.corrects)]
            original = (earlier.meter_pk, earlier.usage_at, earlier.billable)
        if original is None or original[0] != meter.pk:
            raise EventError(422, "unknown_original",
                             f"No event '{event.corrects}' of this customer and meter to correct.",
                             {"corrects": ["Unknown event."]})
        if not original[2]:
            # a refused or non-billable event never counted: correcting it would lower real usage
            raise EventError(422, "original_not_billable",
                             f"Event '{event.corrects}' is not billable (or was refused); there is nothing to correct.",
                             {"corrects": ["The original is not billable."]})
        usage_at = original[1]
    reason, late = event.reason, False
    if usage_at < lookups.closed_until:
        if event.corrects is not None and event.timestamp >= lookups.closed_until:
            # the original's period is closed (its invoice final): book the correction on the open period
            usage_at, reason = event.timestamp, "adjustment"
        else:
            late = True
    return _Row(
        index=index,
        event=event,
        customer_pk=customer.pk,
        project_pk=project_pk,
        meter_pk=meter.pk,
        quantity=quantity,
        usage_at=usage_at,
        run_id=(event.trace or {}).get("run_id") or "",
        fingerprint=fingerprint(event, quantity),
        billable=event.billable,
        reason=reason,
        meter=meter,
        late=late,
    )


_ID_SEQUENCE = f"{UsageEvent._meta.db_table}_id_seq"  # the identity column's sequence (PostgreSQL)
_COLUMNS = (
    "customer_id", "project_id", "meter_id", "event_id", "quantity", "timestamp", "usage_at", "received_at",
    "dimensions", "trace", "run_id", "billable", "reason", "schema_version", "corrects", "fingerprint",
)


def _insert_rows(rows: list[_Row], *, received_at: datetime, booking: Booking | None = None,
                 debited: Sequence[_Row] = ()) -> set[tuple[int, str]]:
    """Insert what is new; return the (customer_pk, event_id) actually inserted by this call. With a
    ledger ``booking`` (PostgreSQL), book it in the same statement, which fails whole (LedgerRefused)
    unless the booking went as expected and every ``debited`` row was inserted by it."""
    table = UsageEvent._meta.db_table
    cols = ", ".join(_COLUMNS)
    conflict = "ON CONFLICT (customer_id, event_id) DO NOTHING RETURNING customer_id, event_id"
    if connection.vendor == "postgresql":
        return _insert_rows_postgresql(rows, received_at, table, cols, conflict, booking, debited)
    if booking is not None:
        raise ValueError("an insert books the ledger in its own statement on PostgreSQL only")
    with connection.cursor() as cursor:  # SQLite: one multi-row VALUES (16,000 parameters at most)
        ops = connection.ops
        received = ops.adapt_datetimefield_value(received_at)
        params: list[Any] = []
        for r in rows:
            params.extend((
                r.customer_pk, r.project_pk, r.meter_pk, r.event.event_id, str(r.quantity),
                ops.adapt_datetimefield_value(r.event.timestamp), ops.adapt_datetimefield_value(r.usage_at), received,
                json.dumps(r.event.dimensions), json.dumps(r.event.trace) if r.event.trace is not None else None,
                r.run_id, r.billable, r.reason, r.event.schema_version, r.event.corrects or "", r.fingerprint,
            ))
        placeholders = ", ".join(["(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"] * len(rows))
        cursor.execute(f"INSERT INTO {table} ({cols}) VALUES {placeholders} {conflict}", params)  # noqa: S608
        return {(int(customer_pk), event_id) for customer_pk, event_id in cursor.fetchall()}


def _insert_rows_postgresql(rows: list[_Row], received_at: datetime, table: str, cols: str, conflict: str,
                            booking: Booking | None, debited: Sequence[_Row]) -> set[tuple[int, str]]:
    """One statement with one array per column: a 1,000-event batch is one round trip and a short
    query text. It runs on a server-side-binding psycopg cursor over Django's connection (same
    transaction): arrays are sent as binary parameters (%b) instead of being quoted into the SQL text,
    which cost about 40 ms per 1,000 events with Django's client-side binding. With a ``booking``, the
    insert is one of the statement's common table expressions and the ledger's are the others; the
    statement returns the inserted keys as two arrays, and ``tollgate_refuse_unless`` makes it fail
    (SQLSTATE TG001, nothing kept) unless the booking's counts and the debited rows' insert are right."""
    import psycopg

    # Rows go in in (customer, event_id) order, so that two batches sharing new ids (a client's retry in
    # flight) wait on each other's unique-index entries in one order and never deadlock (PostgreSQL
    # broke such cycles after deadlock_timeout: 1 s stalls). Their ids still follow the batch's order
    # (taken in the inner, ordinality-sorted query, whose output PostgreSQL computes after its sort):
    # among events at the same instant, a ``latest`` meter keeps the one sent last.
    insert = (
        f"INSERT INTO {table} (id, {cols}) "  # noqa: S608 - table and columns are constants
        "SELECT i, c, p, m, e, q, t, u, %b, d, tr, r, b, rs, sv, co, f FROM ("
        f"SELECT nextval('{_ID_SEQUENCE}') AS i, x.* FROM unnest("
        "%b::bigint[], %b::bigint[], %b::bigint[], %b::text[], %b::numeric[], %b::timestamptz[], "
        "%b::timestamptz[], %b::text[]::jsonb[], %b::text[]::jsonb[], %b::text[], %b::boolean[], %b::text[], "
        "%b::smallint[], %b::text[], %b::text[]) WITH ORDINALITY AS x(c, p, m, e, q, t, u, d, tr, r, b, rs, sv, co, f, n) "
        "ORDER BY n) AS s ORDER BY c, e "
        + conflict)
    params: list[Any] = [
        received_at,
        [r.customer_pk for r in rows],
        [r.project_pk for r in rows],
        [r.meter_pk for r in rows],
        [r.event.event_id for r in rows],
        [r.quantity for r in rows],
        [r.event.timestamp for r in rows],
        [r.usage_at for r in rows],
        [json.dumps(r.event.dimensions) for r in rows],
        [json.dumps(r.event.trace) if r.event.trace is not None else None for r in rows],
        [r.run_id for r in rows],
        [r.billable for r in rows],
        [r.reason for r in rows],
        [r.event.schema_version for r in rows],
        [r.event.corrects or "" for r in rows],
        [r.fingerprint for r in rows],
    ]
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        if booking is None:
            cursor.execute(insert, params)
            return {(int(customer_pk), event_id) for customer_pk, event_id in cursor.fetchall()}
        # Every debited row was inserted by this statement: counted, not matched key by key. The debited rows
        # are the batch's billable rows of their customers but those read as stored before, which exist
        # (events are never deleted) and so are never inserted: the count is reached exactly when each
        # debited row is inserted. (Two small parameters instead of the debited keys as two arrays.)
        debited_customers = sorted({r.customer_pk for r in debited})
        try:
            cursor.execute(
                f"WITH ins AS ({insert}, billable), "  # noqa: S608
                "checked AS (SELECT count(*) FILTER (WHERE billable AND customer_id = ANY(%b::int8[])) = %b::int8 "
                f"AS all_debited FROM ins), {booking.ctes} SELECT tollgate_refuse_unless(checked.all_debited AND "
                f"{booking.ok}, CASE WHEN checked.all_debited THEN '{_BOOKING_REFUSED}' ELSE '{_STORED_MEANWHILE}' END), "
                "(SELECT array_agg(customer_id) FROM ins), (SELECT array_agg(event_id) FROM ins) FROM checked",
                [*params, debited_customers, sum(1 for r in debited if r.billable), *booking.params,
                 *booking.ok_params], prepare=True)
        except psycopg.Error as error:
            if error.sqlstate == "TG001":
                raise (_StoredMeanwhile if _STORED_MEANWHILE in str(error) else LedgerRefused)(str(error)) from error
            raise
        row = cursor.fetchone()
        assert row is not None  # an aggregate: always one row
        _ok, customer_pks, event_ids = row
        return set(zip(map(int, customer_pks or ()), event_ids or (), strict=True))


def _stored_outcomes(rows: list[_Row]) -> dict[tuple[int, str], str]:
    """(customer, event_id) -> stored reason ("" when accepted) for the rows already in the event table."""
    return {key: "" if billable else reason for key, (_fp, billable, reason) in _stored_rows(rows).items()}


def _stored_columns(customer_pk: int, event_ids: list[str], columns: str) -> list[tuple[Any, ...]]:
    """(event_id, *columns) of the customer's stored events among ``event_ids``. On PostgreSQL the ids go
    as one binary text[] parameter: the ORM's ``event_id__in`` compiled a placeholder per id (≈20 ms
    for a 1,000-event batch)."""
    if connection.vendor != "postgresql":
        return list(UsageEvent.objects.filter(customer_id=customer_pk, event_id__in=event_ids).values_list(
            "event_id", *(c.strip() for c in columns.split(","))))
    import psycopg

    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(
            f"SELECT event_id, {columns} FROM {UsageEvent._meta.db_table} "  # noqa: S608 - constants
            "WHERE customer_id = %s AND event_id = ANY(%b::text[])", [customer_pk, event_ids])
        return cursor.fetchall()


def _stored_rows(rows: list[_Row]) -> dict[tuple[int, str], tuple[str, bool, str]]:
    """(customer, event_id) -> stored (fingerprint, billable, reason) for the rows already in the table."""
    by_customer: dict[int, list[str]] = {}
    for r in rows:
        by_customer.setdefault(r.customer_pk, []).append(r.event.event_id)
    stored: dict[tuple[int, str], tuple[str, bool, str]] = {}
    for customer_pk, event_ids in by_customer.items():
        for event_id, fp, billable, reason in _stored_columns(customer_pk, event_ids, "fingerprint, billable, reason"):
            stored[(customer_pk, event_id)] = (fp, billable, reason)
    return stored
