"""Step 4 of ingest, the writes: the event insert (one statement; on PostgreSQL, binary arrays, and the
ledger's booking in the same statement when the ledger shares the database) and the reads of what is
stored. Exactly once: the primary key of the key table, (customer, event_id), decides (``ON CONFLICT DO
NOTHING``): an event is inserted exactly when its key is, in the same statement (PostgreSQL) or
transaction (SQLite). The key table is unique across the event table's monthly partitions (EventKey)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from django.db import OperationalError, connection, transaction

from billing.usage.ingest.rows import Row
from billing.usage.models import EventKey, UsageEvent
from ledger.backends.base import Booking, LedgerRefused

T = TypeVar("T")


_ID_SEQUENCE = f"{UsageEvent._meta.db_table}_id_seq"  # the id column's sequence (PostgreSQL)
_KEYS = EventKey._meta.db_table


_COLUMNS = (
    "customer_id", "project_id", "meter_id", "event_id", "quantity", "timestamp", "usage_at", "received_at",
    "dimensions", "trace", "run_id", "billable", "reason", "schema_version", "corrects", "fingerprint",
)


# (SQL string literals in _insert_rows_postgresql: no quotes in them)
BOOKING_REFUSED = "the ledger refused the booking of the batch: its accounts moved since they were read"


STORED_MEANWHILE = "another request stored one of the events of the batch since it read which are stored"


class StoredMeanwhile(LedgerRefused):
    """The insert kept nothing (``EventInsert``; on PostgreSQL its one statement): an event it was to debit
    was stored by another request after the batch read which are stored (a client's retry in flight).
    Worth one more optimistic pass, which will see it stored: the careful pass would wait for the account
    locks first."""



_ENCODER = msgspec.json.Encoder()


def _json(value: Any) -> str:
    """An event's dimensions or trace as JSON text for its column (a tenth of ``json.dumps``'s cost: two
    per event; non-ASCII kept as UTF-8, which the column stores as is)."""
    return _ENCODER.encode(value).decode()


_RETRIED = {"40P01", "55P03"}  # deadlock_detected; lock_not_available (the careful pass's lock_timeout)


@dataclass
class EventInsert:
    """The batch's insert as the write a ledger books its debit with (``LedgerBackend.book_with``): it
    writes nothing unless it inserts every ``debited`` row itself (another request may have stored one
    since the batch read which are stored: ``StoredMeanwhile``)."""

    rows: list[Row]
    received_at: datetime
    debited: Sequence[Row]

    def run(self, booking: Booking | None = None) -> set[tuple[int, str]]:
        if booking is not None:  # PostgreSQL: one statement, which checks the debited rows itself
            return insert_rows(self.rows, received_at=self.received_at, booking=booking, debited=self.debited)
        inserted = insert_rows(self.rows, received_at=self.received_at)
        if any((r.customer_pk, r.event.event_id) not in inserted for r in self.debited):
            raise StoredMeanwhile(STORED_MEANWHILE)
        return inserted


def retrying_deadlocks(write: Callable[[], T]) -> T:
    """``write()``, again when PostgreSQL rolled it back to break a deadlock, or when the careful pass of
    a limited batch gave up waiting for a lock (see debit._decided_under_locks). Rows go in in one order, so
    two inserts no longer deadlock each other, but the careful pass may still meet an optimistic batch
    the other way round. Whatever was rolled back was rolled back whole, so running it again is safe."""
    for attempt in range(4):
        try:
            return write()
        except OperationalError as error:
            if attempt == 3 or getattr(error.__cause__, "sqlstate", None) not in _RETRIED:
                raise
    raise AssertionError("unreachable")


def insert_rows(rows: list[Row], *, received_at: datetime, booking: Booking | None = None,
                 debited: Sequence[Row] = ()) -> set[tuple[int, str]]:
    """Insert what is new; return the (customer_pk, event_id) actually inserted by this call. With a
    ledger ``booking`` (PostgreSQL), book it in the same statement, which fails whole (LedgerRefused)
    unless the booking went as expected and every ``debited`` row was inserted by it."""
    if not rows and booking is None:  # a settle whose events were all rejected: nothing to insert
        return set()
    table = UsageEvent._meta.db_table
    cols = ", ".join(_COLUMNS)
    if connection.vendor == "postgresql":
        return _insert_rows_postgresql(rows, received_at, table, cols, booking, debited)
    if booking is not None:
        raise ValueError("an insert books the ledger in its own statement on PostgreSQL only")
    if not rows:  # e.g. a settle whose every event was refused: "VALUES ON CONFLICT" is not SQL
        return set()
    return _insert_rows_sqlite(rows, received_at, table, cols)


def _insert_rows_sqlite(rows: list[Row], received_at: datetime, table: str, cols: str) -> set[tuple[int, str]]:
    """The keys first (one multi-row VALUES, ``ON CONFLICT DO NOTHING``), each with the id its event will
    have (the largest id plus its place in the batch: read by the insert itself, which holds SQLite's one
    write lock), then the events of the keys inserted, in the same transaction."""
    ops = connection.ops
    # one transaction (BEGIN IMMEDIATE: settings.py), also when the caller runs in autocommit: the ids read
    # by the keys' insert must not be read again by another request before this one's events are in
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        params: list[Any] = []
        for n, r in enumerate(rows, 1):
            params.extend((r.customer_pk, r.event.event_id, n, ops.adapt_datetimefield_value(r.usage_at)))
        values = ", ".join(["(%s, %s, %s, %s)"] * len(rows))
        cursor.execute(
            f"INSERT INTO {_KEYS} (customer_id, event_id, event, usage_at) SELECT column1, column2, "  # noqa: S608
            f"(SELECT coalesce(max(id), 0) FROM {table}) + column3, column4 FROM (VALUES {values}) WHERE true "
            "ON CONFLICT DO NOTHING RETURNING customer_id, event_id, event", params)
        ids = {(int(customer_pk), event_id): int(event) for customer_pk, event_id, event in cursor.fetchall()}
        new = [r for r in rows if (r.customer_pk, r.event.event_id) in ids]
        if not new:
            return set()
        received = ops.adapt_datetimefield_value(received_at)
        params = []
        for r in new:  # SQLite: one multi-row VALUES (16,000 parameters at most)
            params.extend((
                ids[(r.customer_pk, r.event.event_id)], r.customer_pk, r.project_pk, r.meter_pk, r.event.event_id,
                str(r.quantity), ops.adapt_datetimefield_value(r.event.timestamp), ops.adapt_datetimefield_value(r.usage_at),
                received, _json(r.event.dimensions), _json(r.event.trace) if r.event.trace is not None else None,
                r.run_id, r.billable, r.reason, r.event.schema_version, r.event.corrects or "", r.fingerprint,
            ))
        placeholders = ", ".join(["(" + ", ".join(["%s"] * (len(_COLUMNS) + 1)) + ")"] * len(new))
        cursor.execute(f"INSERT INTO {table} (id, {cols}) VALUES {placeholders}", params)  # noqa: S608
        return set(ids)


def _insert_rows_postgresql(rows: list[Row], received_at: datetime, table: str, cols: str,
                            booking: Booking | None, debited: Sequence[Row]) -> set[tuple[int, str]]:
    """One statement with one array per column: a 1,000-event batch is one round trip and a short
    query text. It runs on a server-side-binding psycopg cursor over Django's connection (same
    transaction): arrays are sent as binary parameters (%b) instead of being quoted into the SQL text,
    which cost about 40 ms per 1,000 events with Django's client-side binding. With a ``booking``, the
    insert is one of the statement's common table expressions and the ledger's are the others; the
    statement returns the inserted keys as two arrays, and ``tollgate_refuse_unless`` makes it fail
    (SQLSTATE TG001, nothing kept) unless the booking's counts and the debited rows' insert are right."""
    import psycopg

    # Keys go in in (customer, event_id) order, so that two batches sharing new ids (a client's retry in
    # flight) wait on each other's key-index entries in one order and never deadlock (PostgreSQL broke
    # such cycles after deadlock_timeout: 1 s stalls). Ids follow the batch's order (taken in the
    # ordinality-sorted ``src``, whose output PostgreSQL computes after its sort, once: MATERIALIZED):
    # among events at the same instant, a ``latest`` meter keeps the one sent last. An event is inserted
    # exactly when its key is (``k`` returns the ids of the keys it inserted).
    ctes = (  # table and columns are constants
        f"src AS MATERIALIZED (SELECT nextval('{_ID_SEQUENCE}') AS i, %b::timestamptz AS ra, x.* FROM unnest("  # noqa: S608
        "%b::bigint[], %b::bigint[], %b::bigint[], %b::text[], %b::numeric[], %b::timestamptz[], "
        "%b::timestamptz[], %b::text[]::jsonb[], %b::text[]::jsonb[], %b::text[], %b::boolean[], %b::text[], "
        "%b::smallint[], %b::text[], %b::text[]) WITH ORDINALITY AS x(c, p, m, e, q, t, u, d, tr, r, b, rs, sv, co, f, n) "
        f"ORDER BY n), k AS (INSERT INTO {_KEYS} (customer_id, event_id, event, usage_at) "
        "SELECT c, e, i, u FROM src ORDER BY c, e ON CONFLICT DO NOTHING RETURNING event), "
        f"ins AS (INSERT INTO {table} (id, {cols}) SELECT i, c, p, m, e, q, t, u, ra, d, tr, r, b, rs, sv, co, f "
        "FROM src WHERE i IN (SELECT event FROM k) RETURNING customer_id, event_id, billable)")
    params: list[Any] = [
        received_at,
        [r.customer_pk for r in rows],
        [r.project_pk for r in rows],
        [r.meter_pk for r in rows],
        [r.event.event_id for r in rows],
        [r.quantity for r in rows],
        [r.event.timestamp for r in rows],
        [r.usage_at for r in rows],
        [_json(r.event.dimensions) for r in rows],
        [_json(r.event.trace) if r.event.trace is not None else None for r in rows],
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
            cursor.execute(f"WITH {ctes} SELECT customer_id, event_id FROM ins", params)  # noqa: S608
            return {(int(customer_pk), event_id) for customer_pk, event_id in cursor.fetchall()}
        # Every debited row was inserted by this statement: counted, not matched key by key. The debited rows
        # are the batch's billable rows of their customers but those read as stored before, which exist
        # (events are never deleted) and so are never inserted: the count is reached exactly when each
        # debited row is inserted. (Two small parameters instead of the debited keys as two arrays.)
        debited_customers = sorted({r.customer_pk for r in debited})
        try:
            cursor.execute(
                f"WITH {ctes}, "  # noqa: S608
                "checked AS (SELECT count(*) FILTER (WHERE billable AND customer_id = ANY(%b::int8[])) = %b::int8 "
                f"AS all_debited FROM ins), {booking.ctes} SELECT tollgate_refuse_unless(checked.all_debited AND "
                f"{booking.ok}, CASE WHEN checked.all_debited THEN '{BOOKING_REFUSED}' ELSE '{STORED_MEANWHILE}' END), "
                "(SELECT array_agg(customer_id) FROM ins), (SELECT array_agg(event_id) FROM ins) FROM checked",
                [*params, debited_customers, sum(1 for r in debited if r.billable), *booking.params,
                 *booking.ok_params], prepare=True)
        except psycopg.Error as error:
            if error.sqlstate == "TG001":
                raise (StoredMeanwhile if STORED_MEANWHILE in str(error) else LedgerRefused)(str(error)) from error
            raise
        row = cursor.fetchone()
        assert row is not None  # an aggregate: always one row
        _ok, customer_pks, event_ids = row
        return set(zip(map(int, customer_pks or ()), event_ids or (), strict=True))


def stored_outcomes(rows: list[Row]) -> dict[tuple[int, str], str]:
    """(customer, event_id) -> stored reason ("" when accepted) for the rows already in the event table."""
    return {key: "" if billable else reason for key, (_fp, billable, reason) in stored_rows(rows).items()}


def stored_columns(customer_pk: int, event_ids: list[str], columns: str) -> list[tuple[Any, ...]]:
    """(event_id, *columns) of the customer's stored events among ``event_ids``: found by their keys, each
    key leading to its event's row in its partition (id and usage_at: the primary key). On PostgreSQL the ids go
    as one binary text[] parameter: the ORM's ``event_id__in`` compiled a placeholder per id (≈20 ms
    for a 1,000-event batch). Each id is looked up on its own (a LATERAL subquery with a LIMIT, which the
    planner cannot turn into a join): one descent of the key's primary key per id, whatever the planner
    believes of the tables. As a plain ``customer_id = %s AND event_id = ANY(ids)``, a plan made on
    statistics that undercount the customer's keys (a new database, a table not analyzed since it grew,
    or autovacuum off: bench-ledger) took only the customer from the index and compared every stored key
    of the customer with each id: 40 ms at the median and up to 330 ms per 1,000-id read of a limited
    batch, growing with the customer's events, instead of about 1.5 ms. Never a prepared statement."""
    if connection.vendor != "postgresql":
        keys = EventKey.objects.filter(customer_id=customer_pk, event_id__in=event_ids).values("event")
        return list(UsageEvent.objects.filter(id__in=keys).values_list(
            "event_id", *(c.strip() for c in columns.split(","))))
    import psycopg

    selected = ", ".join(f"e.{c.strip()}" for c in columns.split(","))
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(stored_sql(selected), [event_ids, customer_pk], prepare=False)
        return cursor.fetchall()


def stored_sql(selected: str) -> str:
    """``stored_columns``'s statement on PostgreSQL (its parameters: the ids as text[], the customer)."""
    return (f"SELECT s.* FROM unnest(%b::text[]) AS ids(event_id) CROSS JOIN LATERAL (SELECT k.event_id, {selected} "  # noqa: S608
            f"FROM {_KEYS} k JOIN {UsageEvent._meta.db_table} e ON e.id = k.event AND e.usage_at = k.usage_at "
            "WHERE k.customer_id = %s AND k.event_id = ids.event_id LIMIT 1) s")


def stored_rows(rows: list[Row]) -> dict[tuple[int, str], tuple[str, bool, str]]:
    """(customer, event_id) -> stored (fingerprint, billable, reason) for the rows already in the table."""
    by_customer: dict[int, list[str]] = {}
    for r in rows:
        by_customer.setdefault(r.customer_pk, []).append(r.event.event_id)
    stored: dict[tuple[int, str], tuple[str, bool, str]] = {}
    for customer_pk, event_ids in by_customer.items():
        for event_id, fp, billable, reason in stored_columns(customer_pk, event_ids, "fingerprint, billable, reason"):
            stored[(customer_pk, event_id)] = (fp, billable, reason)
    return stored
