"""Hourly rollups of billable usage, built incrementally from an ingestion watermark.

Each run reads the raw events after the watermark (by id), aggregates them per (customer, project,
meter, dimension set, hour of ``usage_at``), merges the result into ``HourlyRollup`` and moves the
watermark, all in one transaction that first locks the watermark row: a crash or a concurrent run
leaves nothing half-applied, and a rerun starts where the last committed run stopped.

Event ids are assigned before commit, so an event with a lower id can become visible after a higher
one. A run therefore only reads events received more than ``LAG`` ago (an insert commits within
milliseconds of ``received_at``).

On PostgreSQL a run is two set-based statements (``rollup_sql``: the range's end, then one ``GROUP BY``
merged into the stored rows with ``INSERT ... ON CONFLICT DO UPDATE``); elsewhere (SQLite) it aggregates
and merges here, in Python. Both write the same rows.

``rollup_full`` rebuilds everything from the raw events; ``rollup_check`` recomputes from the raw events
up to the watermark and reports every difference (drift).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import Max

from billing.catalog.models import Meter
from billing.usage import rollup_sql
from billing.usage.models import DailyRollup, DimensionSet, HourlyRollup, RollupWatermark, UsageEvent

LAG = timedelta(seconds=30)
CHUNK = 50_000
Key = tuple[int, int, int, str, datetime]  # customer, project slot, meter, dims_key, hour
DayKey = tuple[int, int, str, datetime]  # customer, meter, dims_key, day


def canonical_dimensions(dimensions: dict[str, str]) -> str:
    """The dimensions as PostgreSQL prints a ``jsonb`` object (keys by byte length, then bytes; ``", "`` and
    ``": "`` separators; the same string escapes), so that ``md5(dimensions::text)`` in SQL and
    ``dims_key`` here agree and the SQL rebuild and the incremental run key the same rows."""
    items = sorted((dimensions or {}).items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
    return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}"
                           for k, v in items) + "}"


def dims_key(dimensions: dict[str, str]) -> str:
    return hashlib.md5(canonical_dimensions(dimensions).encode(), usedforsecurity=False).hexdigest()


@dataclass
class Agg:
    project_id: int | None
    dimensions: dict[str, str]
    total: Decimal = Decimal(0)
    events: int = 0
    maximum: Decimal | None = None
    uniques: set[str] = field(default_factory=set)
    latest: tuple[datetime, int, Decimal] | None = None  # (usage_at, event id, value)

    def add(self, quantity: Decimal, usage_at: datetime, event_id: int, unique: str | None, latest: bool) -> None:
        self.total += quantity
        self.events += 1
        self.maximum = quantity if self.maximum is None else max(self.maximum, quantity)
        if unique is not None:
            self.uniques.add(unique)
        if latest and (self.latest is None or (usage_at, event_id) > self.latest[:2]):
            self.latest = (usage_at, event_id, quantity)

    def merge(self, other: Agg) -> None:
        self.total += other.total
        self.events += other.events
        if other.maximum is not None:
            self.maximum = other.maximum if self.maximum is None else max(self.maximum, other.maximum)
        self.uniques |= other.uniques
        if other.latest is not None and (self.latest is None or other.latest[:2] > self.latest[:2]):
            self.latest = other.latest


def _aggregate(lo: int, hi: int) -> dict[Key, Agg]:
    """Billable events with lo < id <= hi, aggregated per rollup key."""
    unique_by = dict(Meter.objects.filter(aggregation=Meter.Aggregation.UNIQUE_COUNT).values_list("pk", "unique_by"))
    latest_meters = set(Meter.objects.filter(aggregation=Meter.Aggregation.LATEST).values_list("pk", flat=True))
    out: dict[Key, Agg] = {}
    rows = (UsageEvent.objects.filter(id__gt=lo, id__lte=hi, billable=True)
            .values_list("id", "customer_id", "project_id", "meter_id", "dimensions", "quantity", "usage_at")
            .order_by())
    for event_id, customer_id, project_id, meter_id, dimensions, quantity, usage_at in rows.iterator(chunk_size=5000):
        dimensions = dimensions or {}
        hour = usage_at.replace(minute=0, second=0, microsecond=0)
        key = (customer_id, project_id or 0, meter_id, dims_key(dimensions), hour)
        agg = out.get(key)
        if agg is None:
            agg = out[key] = Agg(project_id, dimensions)
        unique = dimensions.get(unique_by[meter_id]) if meter_id in unique_by else None
        agg.add(quantity, usage_at, event_id, unique, meter_id in latest_meters)
    return out


def _stored(keys: set[Key]) -> dict[Key, HourlyRollup]:
    if not keys:
        return {}
    hours = {k[4] for k in keys}
    rows = HourlyRollup.objects.filter(customer_id__in={k[0] for k in keys}, meter_id__in={k[2] for k in keys},
                                       hour__gte=min(hours), hour__lte=max(hours))  # ranges of the unique key
    return {(r.customer_id, r.project_slot, r.meter_id, r.dims_key, r.hour): r for r in rows
            if (r.customer_id, r.project_slot, r.meter_id, r.dims_key, r.hour) in keys}


def _as_agg(row: HourlyRollup | DailyRollup) -> Agg:
    project_id = row.project_id if isinstance(row, HourlyRollup) else None
    return Agg(project_id, {}, row.total, row.events, row.maximum, set(row.uniques),
               (row.latest_at, row.latest_event, row.latest_value)
               if row.latest_at is not None and row.latest_event is not None and row.latest_value is not None else None)


def _write(agg: Agg, key: Key, row: HourlyRollup | None) -> HourlyRollup:
    row = row or HourlyRollup(customer_id=key[0], project_id=agg.project_id, project_slot=key[1], meter_id=key[2],
                              dims_key=key[3], hour=key[4])
    row.total, row.events, row.maximum, row.uniques = agg.total, agg.events, agg.maximum, sorted(agg.uniques)
    if agg.latest is not None:
        row.latest_at, row.latest_event, row.latest_value = agg.latest
    return row


def _store_sets(fresh: dict[Key, Agg]) -> None:
    """The dimension sets of ``fresh``, in one statement that skips those the table holds already (a set is
    written once, ever: ON CONFLICT DO NOTHING)."""
    sets = {key[3]: agg.dimensions for key, agg in fresh.items()}
    DimensionSet.objects.bulk_create([DimensionSet(key=k, dimensions=d) for k, d in sets.items()], ignore_conflicts=True)


def _apply(fresh: dict[Key, Agg]) -> None:
    _store_sets(fresh)
    _merge_into(HourlyRollup, fresh, _stored(set(fresh)), _write)
    daily = _daily(fresh)
    if daily:
        days = {k[3] for k in daily}
        stored = {(r.customer_id, r.meter_id, r.dims_key, r.day): r for r in DailyRollup.objects.filter(
            customer_id__in={k[0] for k in daily}, meter_id__in={k[1] for k in daily}, day__gte=min(days),
            day__lte=max(days))}
        _merge_into(DailyRollup, daily, stored, _write_daily)


def _merge_into(model: type[Any], fresh: dict[Any, Agg], stored: dict[Any, Any], write: Any) -> None:
    """Merge ``fresh`` aggregates into the ``stored`` rows of their keys (new rows for the others)."""
    creates, updates = [], []
    for key, agg in fresh.items():
        row = stored.get(key)
        if row is not None:
            merged = _as_agg(row)
            merged.merge(agg)
            updates.append(write(merged, key, row))
        else:
            creates.append(write(agg, key, None))
    model.objects.bulk_create(creates, batch_size=2000)
    _update_aggregates(model, updates)


AGG_FIELDS = ["total", "events", "maximum", "uniques", "latest_value", "latest_at", "latest_event"]

# On PostgreSQL one UPDATE ... FROM unnest(arrays) per batch: Django's bulk_update writes a CASE WHEN per
# column with a branch per row (each row evaluates up to all of them), 24 s for the ~10,000 daily rows an
# hour of 13,495 events touches across 1,000 customers
UPDATE_SQL = """
UPDATE {table} t SET total = v.total, events = v.events, maximum = v.maximum, uniques = v.uniques::jsonb,
       latest_value = v.latest_value, latest_at = v.latest_at, latest_event = v.latest_event
FROM unnest(%s::bigint[], %s::numeric[], %s::bigint[], %s::numeric[], %s::text[], %s::numeric[], %s::timestamptz[],
            %s::bigint[]) AS v(id, total, events, maximum, uniques, latest_value, latest_at, latest_event)
WHERE t.id = v.id
"""


def _update_aggregates(model: type[Any], rows: list[Any]) -> None:
    if connection.vendor != "postgresql":
        model.objects.bulk_update(rows, AGG_FIELDS, batch_size=2000)
        return
    with connection.cursor() as cursor:
        for start in range(0, len(rows), 10_000):
            batch = rows[start:start + 10_000]
            cursor.execute(UPDATE_SQL.format(table=model._meta.db_table), [
                [r.pk for r in batch], [r.total for r in batch], [r.events for r in batch], [r.maximum for r in batch],
                [json.dumps(r.uniques) for r in batch], [r.latest_value for r in batch], [r.latest_at for r in batch],
                [r.latest_event for r in batch]])


def day_of(moment: datetime) -> datetime:
    """The UTC day (00:00) holding ``moment`` (a UTC datetime): the daily rollups' key."""
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _daily(hourly: dict[Key, Agg]) -> dict[DayKey, Agg]:
    """Hourly aggregates summed per (customer, meter, dims_key, UTC day), across projects."""
    out: dict[DayKey, Agg] = {}
    for (customer_id, _slot, meter_id, key, hour), agg in hourly.items():
        day_key = (customer_id, meter_id, key, day_of(hour))
        if day_key not in out:
            out[day_key] = Agg(None, agg.dimensions)
        out[day_key].merge(agg)
    return out


def _write_daily(agg: Agg, key: DayKey, row: DailyRollup | None) -> DailyRollup:
    row = row or DailyRollup(customer_id=key[0], meter_id=key[1], dims_key=key[2], day=key[3])
    row.total, row.events, row.maximum, row.uniques = agg.total, agg.events, agg.maximum, sorted(agg.uniques)
    if agg.latest is not None:
        row.latest_at, row.latest_event, row.latest_value = agg.latest
    return row


def rollup_incremental(*, now: datetime, chunk: int = CHUNK) -> int:
    """One bounded step: roll up to ``chunk`` events after the watermark. Returns how many ids it covered
    (0 when there was nothing to do). Run it until it returns 0 to catch up."""
    with transaction.atomic():
        state, _ = RollupWatermark.objects.get_or_create(name="hourly")
        state = RollupWatermark.objects.select_for_update().get(pk=state.pk)
        upto, covered = _range_end(state.last_event_id, now - LAG, chunk)
        if not covered:
            return 0
        _apply_range(state.last_event_id, upto)
        state.last_event_id = upto
        state.save(update_fields=["last_event_id", "updated_at"])
    return covered


def _range_end(lo: int, cut: datetime, chunk: int) -> tuple[int, int]:
    """The step's last id and how many events it covers: the first ``chunk`` ids after ``lo``, stopping at
    the first one received at or after ``cut``. Ids are handed out in insert order, not in received_at
    order, so skipping a young id and taking an older one above it would lose the young one."""
    if connection.vendor == "postgresql":
        return rollup_sql.range_end(lo=lo, cut=cut, chunk=chunk)
    return _range_end_python(lo, cut, chunk)


def _range_end_python(lo: int, cut: datetime, chunk: int) -> tuple[int, int]:
    ids = []
    for event_id, received_at in (UsageEvent.objects.filter(id__gt=lo).order_by("id")
                                  .values_list("id", "received_at")[:chunk]):
        if received_at >= cut:
            break
        ids.append(event_id)
    return (ids[-1], len(ids)) if ids else (lo, 0)


def _apply_range(lo: int, hi: int) -> None:
    """The billable events with lo < id <= hi merged into the rollups: on PostgreSQL in SQL (one
    statement, rollup_sql.MERGE_SQL), elsewhere aggregated and merged here."""
    if connection.vendor == "postgresql":
        rollup_sql.merge_range(lo=lo, hi=hi)
    else:
        _apply(_aggregate(lo, hi))


def rollup_until_current(*, now: datetime) -> int:
    total = 0
    while True:
        step = rollup_incremental(now=now)
        if not step:
            return total
        total += step


def rollup_full(*, now: datetime) -> int:
    """Rebuild every rollup from the raw events, in one transaction. On PostgreSQL one
    ``INSERT ... SELECT ... GROUP BY`` does it in the database (the same aggregates as the incremental run,
    keyed the same way); elsewhere the incremental run from a zero watermark."""
    with transaction.atomic():
        state, _ = RollupWatermark.objects.get_or_create(name="hourly")
        read = RollupWatermark.objects.select_for_update().values_list("last_event_id", flat=True).get(pk=state.pk)
        RollupWatermark.objects.filter(pk=state.pk).update(last_event_id=0)
        if connection.vendor != "postgresql":
            HourlyRollup.objects.all().delete()
            DailyRollup.objects.all().delete()
            return rollup_until_current(now=now)
        with connection.cursor() as cursor:
            # TRUNCATE (transactional in PostgreSQL) instead of a DELETE of millions of rows; readers of the
            # rollups wait for the rebuild's commit instead of seeing it half done.
            cursor.execute("TRUNCATE usage_hourly_rollup, usage_daily_rollup")
        return _rollup_full_sql(now=now, read=read)


# One scan of the events for every meter but ``latest`` ones, and no ordered or distinct aggregate: a
# ``unique_count`` meter's distinct values need none, since its ``unique_by`` is one of the dimensions a
# group is keyed by, so a group holds one value (or none), read from its dimensions. ``latest`` meters (an
# ordered aggregate: a sort per group) get a statement of their own. Each statement takes its meters as an
# array of ids (``e.meter_id = ANY(%s)``), not as a condition on the joined meter's aggregation:
# PostgreSQL estimates the former from the column's statistics, and the latter (a guess of a few per cent
# of the rows) made it sort instead of hash. The rollup's key without digesting each group: the groups'
# dimensions are looked up in the (small) table of dimension sets, the rebuild having added the sets of the
# events the incremental run has not read yet (SETS_SQL); md5 only for a set still missing (the check
# after the rebuild stores those).
_INSERT = """
INSERT INTO usage_hourly_rollup (customer_id, project_id, project_slot, meter_id, dims_key, hour, total, events,
                                 maximum, uniques, latest_value, latest_at, latest_event)
SELECT g.customer_id, g.project_id, COALESCE(g.project_id, 0), g.meter_id, COALESCE(s.key, md5(g.dimensions::text)),
       g.hour, g.total, g.events, g.maximum,
       CASE WHEN m.aggregation = 'unique_count' AND g.dimensions ? m.unique_by
            THEN jsonb_build_array(g.dimensions ->> m.unique_by) ELSE '[]'::jsonb END,
       %s
FROM (SELECT e.customer_id, e.project_id, e.meter_id, COALESCE(e.dimensions, '{}') AS dimensions,
             date_trunc('hour', e.usage_at, 'UTC') AS hour, sum(e.quantity) AS total, count(*) AS events,
             max(e.quantity) AS maximum%s
      FROM usage_event e
      WHERE e.id <= %%s AND e.billable AND e.meter_id = ANY(%%s)
      GROUP BY e.customer_id, e.project_id, e.meter_id, COALESCE(e.dimensions, '{}'),
               date_trunc('hour', e.usage_at, 'UTC')) g
JOIN catalog_meter m ON m.id = g.meter_id
LEFT JOIN usage_dimension_set s ON s.dimensions = g.dimensions
"""
SETS_SQL = """
INSERT INTO usage_dimension_set (key, dimensions)
SELECT md5(d::text), d FROM (SELECT DISTINCT COALESCE(dimensions, '{}') AS d FROM usage_event
                             WHERE id > %s AND id <= %s AND billable) x
ON CONFLICT (key) DO NOTHING
"""
# Every set the rollups use is in the table; the daily rows name each one the hourly rows do, in fewer rows.
SETS_MISSING_SQL = """
SELECT 1 FROM usage_daily_rollup r WHERE NOT EXISTS (SELECT 1 FROM usage_dimension_set s WHERE s.key = r.dims_key)
LIMIT 1
"""
FULL_SQL_PLAIN = _INSERT % ("NULL, NULL, NULL", "")
FULL_SQL_LATEST = _INSERT % ("g.latest_value, g.latest_at, g.latest_event", ", " + rollup_sql.LATEST_OF_EVENTS)

# The daily rows from the hourly ones, the same two kinds of statement (a dimension set's hours hold the
# same distinct values, as above: any one of them is the day's).
_DAILY = """
INSERT INTO usage_daily_rollup (customer_id, meter_id, dims_key, day, total, events, maximum, uniques, latest_value,
                                latest_at, latest_event)
SELECT r.customer_id, r.meter_id, r.dims_key, date_trunc('day', r.hour, 'UTC'), sum(r.total), sum(r.events),
       max(r.maximum), %s
FROM usage_hourly_rollup r
WHERE r.meter_id = ANY(%%s)
GROUP BY r.customer_id, r.meter_id, r.dims_key, date_trunc('day', r.hour, 'UTC')
"""
DAILY_SQL_PLAIN = _DAILY % "(array_agg(r.uniques))[1], NULL, NULL, NULL"
_LATEST = "ORDER BY r.latest_at DESC, r.latest_event DESC) FILTER (WHERE r.latest_at IS NOT NULL))[1]"
DAILY_SQL_LATEST = _DAILY % (f"'[]'::jsonb, (array_agg(r.latest_value {_LATEST}, (array_agg(r.latest_at {_LATEST}, "
                             f"(array_agg(r.latest_event {_LATEST}")

INDEXES = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname, pg_get_constraintdef(c.oid)
FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
WHERE i.indrelid = %s::regclass
"""
TABLES = ("usage_hourly_rollup", "usage_daily_rollup")
# The rebuild's aggregations as hash aggregates over one sequential scan, for the rest of its transaction.
# Left to itself, at 10M events PostgreSQL read the events through an index in customer order and sorted
# each customer's rows (its estimate of a spilling hash aggregate is pessimistic), and sorted the hourly rows
# on disk for the daily ones: the rebuild took 195 s, 83-122 s with this (docs/performance.md).
HASH_AGGREGATION = "SELECT set_config('enable_sort', 'off', true), set_config('enable_indexscan', 'off', true)"


def full_statements(upto: int) -> list[tuple[str, list[Any]]]:
    """The rebuild's INSERTs for events with ``id <= upto``: every meter but the ``latest`` ones, then those
    (if any); then the daily rows from the hourly ones, the same way."""
    plain: list[int] = []
    latest: list[int] = []
    for pk, aggregation in Meter.objects.values_list("pk", "aggregation"):
        (latest if aggregation == Meter.Aggregation.LATEST else plain).append(pk)
    hourly = [(sql, [upto, ids]) for sql, ids in ((FULL_SQL_PLAIN, plain), (FULL_SQL_LATEST, latest)) if ids]
    return hourly + [(sql, [ids]) for sql, ids in ((DAILY_SQL_PLAIN, plain), (DAILY_SQL_LATEST, latest)) if ids]


Indexes = list[tuple[str, str, str, str | None, str | None]]  # table, index, definition, constraint, its definition


def bulk_load_begin(cursor: CursorWrapper) -> Indexes:
    """Inside the rebuild's transaction: every index of the rollup tables dropped (primary and unique keys
    included), memory for this transaction alone to rebuild each with one in-memory sort, and its
    aggregations hashed (HASH_AGGREGATION). Returns their definitions, for the rebuild to restore. The
    aggregation keeps the server's ``work_mem``: a larger one (256 MB) made it slower here, one big hash
    table missing the CPU caches."""
    cursor.execute("SET LOCAL maintenance_work_mem = '512MB'")
    cursor.execute(HASH_AGGREGATION)
    indexes: Indexes = []
    for table in TABLES:
        cursor.execute(INDEXES, [table])
        indexes += [(table, *row) for row in cursor.fetchall()]
    for table, index, _, constraint, _ in indexes:
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{constraint}"' if constraint else f"DROP INDEX {index}")
    return indexes


def bulk_load_end(cursor: CursorWrapper, indexes: Indexes) -> None:
    """Rebuild what ``bulk_load_begin`` dropped: the keys first, then the plain indexes."""
    for table, _, index_def, constraint, constraint_def in sorted(indexes, key=lambda i: i[4] is None):
        cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{constraint}" {constraint_def}' if constraint else index_def)


def _rollup_full_sql(*, now: datetime, read: int) -> int:
    """The rebuild on PostgreSQL, inside ``rollup_full``'s transaction, on the table it truncated: the
    indexes are dropped, the rows inserted, and the indexes rebuilt from their own definitions (one sorted
    build each is much cheaper than maintaining them row by row); all of it commits or rolls back as one.
    ``read``: the watermark before the rebuild (the dimension sets of the events up to it are stored)."""
    with connection.cursor() as cursor:
        # Same rule as the incremental run: stop before the first event still inside LAG (BRIN on received_at).
        # ``id + 0``: with a bare ``min(id)`` PostgreSQL walks the primary key from the smallest id, testing
        # each event's received_at, which reads every event when none is that young (2.4 s at 10M).
        cursor.execute("SELECT min(id + 0) FROM usage_event WHERE received_at >= %s", [now - LAG])
        young = cursor.fetchone()[0]
        cursor.execute("SELECT max(id) FROM usage_event WHERE id < %s", [young or 2**63 - 1])
        upto = cursor.fetchone()[0] or 0
        if not upto:
            return 0
        cursor.execute(SETS_SQL, [min(read, upto), upto])
        indexes = bulk_load_begin(cursor)
        for sql, params in full_statements(upto):
            cursor.execute(sql, params)
        cursor.execute(SETS_MISSING_SQL)
        if cursor.fetchone():  # a set lost from the table: digested above; stored again here from every event
            cursor.execute(SETS_SQL, [0, upto])
        cursor.execute("SELECT COALESCE(sum(events), 0) FROM usage_daily_rollup")  # cheaper than RETURNING
        covered = cursor.fetchone()[0]
        bulk_load_end(cursor, indexes)
    RollupWatermark.objects.filter(name="hourly").update(last_event_id=upto)
    return int(covered)


def rollup_check() -> list[str]:
    """Recompute from the raw events up to the watermark and compare with the stored rollups."""
    state = RollupWatermark.objects.filter(name="hourly").first()
    upto = state.last_event_id if state else 0
    expected = _aggregate(0, upto)
    stored = {(r.customer_id, r.project_slot, r.meter_id, r.dims_key, r.hour): r for r in HourlyRollup.objects.all()}
    drift = _compare({key: _write(agg, key, None) for key, agg in expected.items()}, stored, "")
    daily = {(r.customer_id, r.meter_id, r.dims_key, r.day): r for r in DailyRollup.objects.all()}
    drift += _compare({key: _write_daily(agg, key, None) for key, agg in _daily(expected).items()}, daily, "daily ")
    used = {key[3] for key in stored}
    sets = dict(DimensionSet.objects.filter(key__in=used).values_list("key", "dimensions"))
    for key in sorted(used):
        if key not in sets:
            drift.append(f"dimension set {key}: missing")
        elif dims_key(sets[key]) != key:
            drift.append(f"dimension set {key}: holds {sets[key]!r}, whose key is {dims_key(sets[key])}")
    return drift


def _compare(expected: dict[Any, Any], stored: dict[Any, Any], label: str) -> list[str]:
    drift = []
    for key in sorted(set(expected) | set(stored), key=str):
        want, have = expected.get(key), stored.get(key)
        if want is None or have is None:
            drift.append(f"{key}: {'missing' if have is None else 'unexpected'} {label}rollup")
            continue
        for name in AGG_FIELDS:
            if getattr(want, name) != getattr(have, name):
                drift.append(f"{key}: {label}{name} is {getattr(have, name)!r}, raw events say {getattr(want, name)!r}")
    return drift


def latest_event_id() -> int:
    return UsageEvent.objects.aggregate(m=Max("id"))["m"] or 0

