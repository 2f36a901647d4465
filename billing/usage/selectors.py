"""Reads of usage: the raw event list, usage aggregated per meter, bucket and group (whole hours from the
hourly rollups, the rest from raw events), and the dimension sets behind the rollups' keys.
Aggregation runs in Python on exact Decimals, so it is exact on SQLite too.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet

from billing.catalog.models import Meter
from billing.common import process_caches
from billing.common.calendar import period_bounds
from billing.common.errors import DomainError
from billing.customers.models import Customer, Project
from billing.usage.errors import UsageCode
from billing.usage.models import DailyRollup, DimensionSet, HourlyRollup, RollupWatermark, UsageEvent
from billing.usage.rollups import day_of

GRANULARITIES = ("hour", "day", "month")

# The dimension sets by their key. A key is the digest of the canonical dimensions (rollups.dims_key), so a
# key never changes its set: the sets already seen are kept per process (bounded).
_DIMENSIONS: dict[str, dict[str, str]] = process_caches.register("billing.usage.selectors._DIMENSIONS", {})
_DIMENSIONS_MAX = 100_000


class RollupDriftError(DomainError):
    """A rollup row whose dimension set is not stored: the rollups need ``manage.py rollup --full``. The
    API answers ``rollups_drift`` (never usage without its dimensions); a task fails with it, logged."""

    def __init__(self, message: str) -> None:
        super().__init__(UsageCode.ROLLUPS_DRIFT, message)


def dimension_sets(keys: set[str]) -> dict[str, dict[str, str]]:
    """The dimensions behind each of the rollup rows' ``keys``: from this process's cache, else one query."""
    out = {key: _DIMENSIONS[key] for key in keys if key in _DIMENSIONS}
    missing = keys - out.keys()
    if not missing:
        return out
    loaded = dict(DimensionSet.objects.filter(key__in=missing).values_list("key", "dimensions"))
    lost = missing - loaded.keys()
    if lost:
        raise RollupDriftError(f"rollups hold dimension sets {sorted(lost)[:5]} that are not stored; run "
                               "manage.py rollup --check, then --full")
    if len(_DIMENSIONS) + len(loaded) > _DIMENSIONS_MAX:
        _DIMENSIONS.clear()
    _DIMENSIONS.update(loaded)
    return {**out, **loaded}


def events_list(
    *,
    customer_pks: list[int] | None,
    meter: Meter | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[UsageEvent]:
    """Newest received first (descending id), keyset-paginated: stable under concurrent ingest."""
    qs: QuerySet[UsageEvent] = UsageEvent.objects.select_related("customer", "project", "meter").order_by("-id")
    if customer_pks is not None:
        qs = qs.filter(customer_id__in=customer_pks)
    if meter is not None:
        qs = qs.filter(meter=meter)
    if start is not None:
        qs = qs.filter(timestamp__gte=start)
    if end is not None:
        qs = qs.filter(timestamp__lt=end)
    if after_id is not None:
        qs = qs.filter(id__lt=after_id)
    return list(qs[:limit])


def cursor_encode(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def cursor_decode(cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, value = text.split(":", 1)
        number = int(value)
    except (ValueError, UnicodeDecodeError):
        return None
    return number if kind == "id" and 0 < number < 2**63 else None  # a bigint, or PostgreSQL refuses the query


def bucket_bounds(moment: datetime, granularity: str) -> tuple[datetime, datetime]:
    """The half-open bucket [start, end) holding ``moment`` (UTC)."""
    moment = moment.astimezone(timezone.utc)
    if granularity == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    if granularity == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    return period_bounds(moment)


@dataclass
class _Aggregate:
    meter: Meter
    value: Decimal | None = None
    latest_at: tuple[datetime, int] | None = None
    seen: set[str] | None = None

    def add(self, quantity: Decimal, usage_at: datetime, event_pk: int, dimensions: dict[str, str]) -> None:
        agg = self.meter.aggregation
        if agg in (Meter.Aggregation.SUM, Meter.Aggregation.COUNT):
            self.value = (self.value or Decimal(0)) + quantity
        elif agg == Meter.Aggregation.MAX:
            self.value = quantity if self.value is None else max(self.value, quantity)
        elif agg == Meter.Aggregation.LATEST:
            if self.latest_at is None or (usage_at, event_pk) > self.latest_at:
                self.latest_at, self.value = (usage_at, event_pk), quantity
        else:  # unique_count
            if self.seen is None:
                self.seen = set()
            member = dimensions.get(self.meter.unique_by)
            if member is not None:
                self.seen.add(member)

    def add_rollup(self, row: HourlyRollup) -> None:
        """Merge one hourly rollup (the same aggregations, pre-computed)."""
        agg = self.meter.aggregation
        if agg in (Meter.Aggregation.SUM, Meter.Aggregation.COUNT):
            self.value = (self.value or Decimal(0)) + row.total
        elif agg == Meter.Aggregation.MAX:
            if row.maximum is not None:
                self.value = row.maximum if self.value is None else max(self.value, row.maximum)
        elif agg == Meter.Aggregation.LATEST:
            if row.latest_at is not None and row.latest_event is not None and (
                    self.latest_at is None or (row.latest_at, row.latest_event) > self.latest_at):
                self.latest_at, self.value = (row.latest_at, row.latest_event), row.latest_value
        else:
            self.seen = (self.seen or set()) | set(row.uniques)

    def result(self) -> Decimal:
        if self.meter.aggregation == Meter.Aggregation.UNIQUE_COUNT:
            return Decimal(len(self.seen or ()))
        return self.value if self.value is not None else Decimal(0)


def usage_aggregate(
    *,
    customer: Customer,
    start: datetime,
    end: datetime,
    granularity: str,
    meter: Meter | None = None,
    group_by: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Billable usage of ``customer`` in [start, end), per meter, bucket and group.

    Corrections count in the hour of the event they correct (``usage_at``). ``group_by`` takes
    ``project`` and dimension names; an event without that dimension groups under null.

    Whole hours up to the rollup watermark come from the hourly rollups; the edge hours that [start, end)
    cuts and the events not rolled up yet (id above the watermark) come from the raw events.
    """
    meters = {m.pk: m for m in Meter.objects.all()}
    watermark = RollupWatermark.objects.filter(name="hourly").values_list("last_event_id", flat=True).first() or 0
    whole_lo = start if start == start.replace(minute=0, second=0, microsecond=0) else (
        start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1))
    whole_hi = max(end.replace(minute=0, second=0, microsecond=0), whole_lo)
    aggregates: dict[tuple[Any, ...], _Aggregate] = {}

    def aggregate_for(meter_pk: int, moment: datetime, group: tuple[Any, ...]) -> _Aggregate:
        key = (meter_pk, bucket_bounds(moment, granularity), group)
        aggregate = aggregates.get(key)
        if aggregate is None:
            aggregate = aggregates[key] = _Aggregate(meters[meter_pk])
        return aggregate

    if watermark and whole_lo < whole_hi:
        rolled = HourlyRollup.objects.filter(customer=customer, hour__gte=whole_lo, hour__lt=whole_hi)
        if meter is not None:
            rolled = rolled.filter(meter=meter)
        projects = dict(Project.objects.filter(customer=customer).values_list("pk", "key"))
        hours = list(rolled.iterator(chunk_size=5000))
        sets = dimension_sets({row.dims_key for row in hours}) if any(name != "project" for name in group_by) else {}
        for row in hours:
            group = tuple(projects.get(row.project_id or 0) if name == "project" else sets[row.dims_key].get(name)
                          for name in group_by)
            aggregate_for(row.meter_id, row.hour, group).add_rollup(row)
    qs = UsageEvent.objects.filter(customer=customer, billable=True, usage_at__gte=start, usage_at__lt=end)
    if watermark and whole_lo < whole_hi:  # raw: the tail after the watermark, and the cut edge hours
        qs = qs.filter(Q(id__gt=watermark) | Q(usage_at__lt=whole_lo) | Q(usage_at__gte=whole_hi))
    if meter is not None:
        qs = qs.filter(meter=meter)
    rows = qs.values_list("pk", "meter_id", "project__key", "dimensions", "quantity", "usage_at").order_by()
    for pk, meter_pk, project_key, dimensions, quantity, usage_at in _iterate(rows):
        group = tuple(project_key if name == "project" else (dimensions or {}).get(name) for name in group_by)
        aggregate_for(meter_pk, usage_at, group).add(quantity, usage_at, pk, dimensions or {})
    data = []
    for (meter_pk, (b_start, b_end), group), aggregate in sorted(
        aggregates.items(), key=lambda item: (meters[item[0][0]].key, item[0][1][0], [str(g) for g in item[0][2]])
    ):
        data.append({
            "meter": meters[meter_pk].key,
            "start": b_start,
            "end": b_end,
            "group": dict(zip(group_by, group, strict=True)),
            "quantity": aggregate.result(),
        })
    return data


def _iterate(rows: QuerySet[Any]) -> Iterator[tuple[Any, ...]]:
    yield from rows.iterator(chunk_size=5000)


# --- the rollups over ranges of whole hours (invoicing prices them: billing.invoicing.rows) ---------------
# One statement (one snapshot): the watermark, then per range, meter and dimension set the rollups' aggregate.
# Sum, count and unique_count meters: totals from a covering index (customer, meter, hour|day) INCLUDE
# (dims_key, total) alone. (A unique_count meter's distinct values are its dimension sets' values of its
# ``unique_by``, one per set, which is how every rollup stores them: they are taken from the set, in Python,
# not read from the rows.) Max and latest meters: the largest maximum, the distinct sets of distinct values
# (their union is taken in Python: a lateral unnest made PostgreSQL expect 100 rows per rollup row and plan
# parallel workers) and the latest (time, event id, value), as the hour rows would give them. The ranges of
# whole days are read from the daily rollups, the others from the hourly ones, numbered 1..n in that order
# (a daily range's number is offset by the number of hourly ones); the watermark is row 0.
_KEYED_SELECT = ("SELECT g.n{offset}, r.meter_id, r.dims_key, sum(r.total), NULL::numeric, NULL::jsonb[], "
                 "NULL::timestamptz, NULL::bigint, NULL::numeric")
_LATEST = ("ORDER BY r.latest_at DESC, r.latest_event DESC) FILTER (WHERE r.latest_at IS NOT NULL "
           "AND r.latest_event IS NOT NULL AND r.latest_value IS NOT NULL))[1]")
_ROWS_SELECT = ("SELECT g.n{offset}, r.meter_id, r.dims_key, sum(r.total), max(r.maximum), "
                "array_agg(DISTINCT r.uniques) FILTER (WHERE r.uniques <> '[]'::jsonb), "
                f"(array_agg(r.latest_at {_LATEST}, (array_agg(r.latest_event {_LATEST}, "
                f"(array_agg(r.latest_value {_LATEST}")
_RANGES = """
FROM unnest(%({p}a)s::timestamptz[], %({p}b)s::timestamptz[]) WITH ORDINALITY AS g(a, b, n)
JOIN {table} r ON r.customer_id = %(customer)s AND r.meter_id = ANY(%({meters})s) AND r.{time} >= g.a
                  AND r.{time} < g.b
GROUP BY g.n, r.meter_id, r.dims_key"""
ROLLUPS_SQL = "\nUNION ALL\n".join(
    ["SELECT 0::bigint, NULL::bigint, NULL::text, COALESCE((SELECT last_event_id FROM usage_rollupwatermark "
     "WHERE name = 'hourly'), 0)::numeric, NULL::numeric, NULL::jsonb[], NULL::timestamptz, NULL::bigint, NULL::numeric"]
    + [select.format(offset=offset) + _RANGES.format(p=p, table=table, time=time, meters=meters)
       for select, meters in ((_KEYED_SELECT, "keyed"), (_ROWS_SELECT, "others"))
       for offset, p, table, time in (("", "h", "usage_hourly_rollup", "hour"),
                                      (" + %(offset)s", "d", "usage_daily_rollup", "day"))])


def _split_days(ranges: list[tuple[datetime, datetime]]) -> tuple[list[tuple[datetime, datetime]],
                                                                   list[tuple[datetime, datetime]]]:
    """Whole-hour ranges as (hour ranges, whole-day ranges): each range's whole UTC days go to the second."""
    hours, days = [], []
    for a, b in ranges:
        first = a if a == day_of(a) else day_of(a) + timedelta(days=1)
        last = day_of(b)
        if first < last:
            days.append((first, last))
            hours += [(x, y) for x, y in ((a, first), (last, b)) if x < y]
        else:
            hours.append((a, b))
    return hours, days


def rollup_ranges_read(*, customer_pk: int, meter_pks: list[int], keyed: set[int],
                       ranges: list[tuple[datetime, datetime]]) -> tuple[list[tuple[Any, ...]], int]:
    """A customer's rollups over whole-hour ranges (whole days from the daily rollups) and the watermark they
    hold the events up to, as ``(at, meter_id, dims_key, total, maximum, uniques, latest_at, latest_event,
    latest_value)``. On PostgreSQL the ranges are aggregated in the database, one row per range, meter and
    dimension set (pricing needs a range's total, maximum, distinct values or latest value, not its hours:
    a range never spans a price change), ``at`` being the range's start; ``keyed`` meters (sum, count,
    unique_count) need only their totals. Elsewhere the rows come hour by hour and day by day (the caller
    holds a transaction: one snapshot)."""
    hours, days = _split_days(ranges)
    ranges = hours + days
    found: list[tuple[Any, ...]] = []
    if connection.vendor == "postgresql":
        keyed_pks = [pk for pk in meter_pks if pk in keyed]
        with connection.cursor() as cursor:
            cursor.execute(ROLLUPS_SQL, {
                "customer": customer_pk, "offset": len(hours), "keyed": keyed_pks,
                "others": [pk for pk in meter_pks if pk not in keyed], "ha": [a for a, _ in hours],
                "hb": [b for _, b in hours], "da": [a for a, _ in days], "db": [b for _, b in days]})
            fetched = cursor.fetchall()
        watermark = int(next(row[3] for row in fetched if row[0] == 0))
        starts = [a for a, _ in ranges]
        found = [(starts[n - 1], meter_id, key, total, maximum,
                  [value for values in uniques or () for value in _json(values)], *latest)
                 for n, meter_id, key, total, maximum, uniques, *latest in fetched if n != 0]
    else:
        watermark = RollupWatermark.objects.filter(name="hourly").values_list("last_event_id", flat=True).first() or 0
        fields = ("meter_id", "dims_key", "total", "maximum", "uniques", "latest_at", "latest_event", "latest_value")
        for model, time_field, spans in ((HourlyRollup, "hour", hours), (DailyRollup, "day", days)):
            for a, b in spans:
                rolled = model.objects.filter(customer_id=customer_pk, **{f"{time_field}__gte": a, f"{time_field}__lt": b})
                found += list(rolled.order_by().values_list(time_field, *fields))
    return found, watermark


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def meter_has_events(meter_pk: int) -> bool:
    """Any event of the meter, by any customer: one probe per customer into the (customer, meter, usage_at)
    index rather than a scan of every event."""
    return Customer.objects.filter(
        Exists(UsageEvent.objects.filter(customer_id=OuterRef("pk"), meter_id=meter_pk))).exists()
