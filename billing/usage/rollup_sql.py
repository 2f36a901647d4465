"""The incremental rollup step on PostgreSQL, set-based: two statements instead of reading every new event
into Python (``rollups.rollup_incremental`` calls them under its watermark lock, in its transaction).

``range_end`` finds how far the step reads, by the same rule as the Python loop it replaces: the first
``chunk`` ids after the watermark, cut before the first one still inside the lag. ``merge_range``
aggregates the billable events of that id range per rollup key in one ``GROUP BY`` and merges the groups
into the stored hourly rows with ``INSERT ... ON CONFLICT (the unique key) DO UPDATE``, and into the daily
rows (the same groups summed per day, across projects) the same way, storing the range's dimension sets
on the way: one statement. The merge is the Python path's ``Agg.merge`` in SQL: totals and event counts
added, the larger maximum, the sorted union of the distinct values, the later latest value by
(``latest_at``, ``latest_event``), the stored one on a tie. The rows it writes equal those of the Python
path and of the rebuild (``rollup_check`` compares them with a recomputation).
"""

from __future__ import annotations

from datetime import datetime

from django.db import connection

from billing.catalog.models import Meter

# The first ``chunk`` ids after the watermark (the primary key's order, one index range per partition),
# then the largest of them below the first one received at or after ``cut``, and how many are below it.
RANGE_SQL = """
WITH c AS MATERIALIZED (SELECT id, received_at FROM usage_event WHERE id > %(lo)s ORDER BY id LIMIT %(chunk)s)
SELECT max(c.id), count(*) FROM c
WHERE c.id < COALESCE((SELECT min(y.id) FROM c y WHERE y.received_at >= %(cut)s), 9223372036854775807)
"""

# One group per (customer, project, meter, dimensions, hour) of the range's billable events. ``latest``
# meters in a branch of their own, the only one with an ordered aggregate (as the rebuild does it).
_GROUPS = """
SELECT e.customer_id, e.project_id, e.meter_id, COALESCE(e.dimensions, '{}') AS dims,
       date_trunc('hour', e.usage_at, 'UTC') AS hour, sum(e.quantity) AS total, count(*) AS events,
       max(e.quantity) AS maximum, %s
FROM usage_event e
WHERE e.id > %%(lo)s AND e.id <= %%(hi)s AND e.billable AND %s
GROUP BY e.customer_id, e.project_id, e.meter_id, COALESCE(e.dimensions, '{}'), date_trunc('hour', e.usage_at, 'UTC')
"""
_BY_TIME = "ORDER BY e.usage_at DESC, e.id DESC))[1]"
# A group's latest event (by usage time, then id): its quantity, time and id; the rebuild uses it too
LATEST_OF_EVENTS = (f"(array_agg(e.quantity {_BY_TIME} AS latest_value, (array_agg(e.usage_at {_BY_TIME} "
                    f"AS latest_at, (array_agg(e.id {_BY_TIME} AS latest_event")
GROUPS_PLAIN = _GROUPS % ("NULL::numeric AS latest_value, NULL::timestamptz AS latest_at, NULL::bigint AS latest_event",
                          "e.meter_id <> ALL(%(latest)s::bigint[])")
GROUPS_LATEST = _GROUPS % (LATEST_OF_EVENTS, "e.meter_id = ANY(%(latest)s::bigint[])")

# Stored row ``t`` merged with the range's ``excluded``, as ``Agg.merge``. A unique_count row holds one
# value at most (its ``unique_by`` is one of the dimensions its key digests), so the union is nearly always
# the stored array (``<@``: contained); otherwise both arrays' values, distinct, sorted by code point
# (``COLLATE "C"``, as Python sorts). ``latest_*``: the range's when it is later by (at, event id).
_NEWER = ("excluded.latest_at IS NOT NULL AND (t.latest_at IS NULL OR t.latest_event IS NULL OR t.latest_value IS NULL "
          "OR (excluded.latest_at, excluded.latest_event) > (t.latest_at, t.latest_event))")
_MERGE = f"""
total = t.total + excluded.total, events = t.events + excluded.events,
maximum = GREATEST(t.maximum, excluded.maximum),
uniques = CASE WHEN excluded.uniques <@ t.uniques THEN t.uniques
               ELSE (SELECT COALESCE(jsonb_agg(u.v ORDER BY u.v COLLATE "C"), '[]'::jsonb)
                     FROM (SELECT DISTINCT jsonb_array_elements_text(t.uniques || excluded.uniques) AS v) u) END,
latest_value = CASE WHEN {_NEWER} THEN excluded.latest_value ELSE t.latest_value END,
latest_at = CASE WHEN {_NEWER} THEN excluded.latest_at ELSE t.latest_at END,
latest_event = CASE WHEN {_NEWER} THEN excluded.latest_event ELSE t.latest_event END
"""  # noqa: S608 - constants

# The range's groups summed per day; ``f.latest_at`` is set in the groups of ``latest`` meters alone, which get
# the ordered aggregates (the others hash).
_DAILY = """
SELECT f.customer_id, f.meter_id, f.dims_key, date_trunc('day', f.hour, 'UTC'), sum(f.total), sum(f.events),
       max(f.maximum), f.uniques, %s
FROM f WHERE f.latest_at %s
GROUP BY f.customer_id, f.meter_id, f.dims_key, date_trunc('day', f.hour, 'UTC'), f.uniques
"""
_BY_AT = "ORDER BY f.latest_at DESC, f.latest_event DESC))[1]"

# One statement: the groups (``g``); the range's distinct dimension sets digested once each (``d``: an md5
# per set, never per event or group) and stored if new; the groups keyed (``f``); merged into the hourly
# rows; and, summed per (customer, meter, dimension set, UTC day), into the daily rows. ``uniques`` is a
# function of the meter and the dimension set, so grouping the daily rows by it too splits no group.
# ON CONFLICT DO UPDATE may touch a row once per statement: ``f`` and the daily groups are unique per key.
MERGE_SQL = f"""
WITH g AS MATERIALIZED ({GROUPS_PLAIN} UNION ALL {GROUPS_LATEST}),
d AS MATERIALIZED (SELECT x.dims, md5(x.dims::text) AS key FROM (SELECT DISTINCT dims FROM g) x),
sets AS (INSERT INTO usage_dimension_set (key, dimensions) SELECT key, dims FROM d ON CONFLICT (key) DO NOTHING),
f AS MATERIALIZED (
  SELECT g.customer_id, g.project_id, COALESCE(g.project_id, 0) AS project_slot, g.meter_id, d.key AS dims_key, g.hour,
         g.total, g.events, g.maximum,
         CASE WHEN m.aggregation = 'unique_count' AND g.dims ? m.unique_by
              THEN jsonb_build_array(g.dims ->> m.unique_by) ELSE '[]'::jsonb END AS uniques,
         g.latest_value, g.latest_at, g.latest_event
  FROM g JOIN d ON d.dims = g.dims JOIN catalog_meter m ON m.id = g.meter_id),
hourly AS (
  INSERT INTO usage_hourly_rollup AS t (customer_id, project_id, project_slot, meter_id, dims_key, hour, total, events,
                                        maximum, uniques, latest_value, latest_at, latest_event)
  SELECT customer_id, project_id, project_slot, meter_id, dims_key, hour, total, events, maximum, uniques,
         latest_value, latest_at, latest_event FROM f
  ON CONFLICT (customer_id, meter_id, hour, project_slot, dims_key) DO UPDATE SET {_MERGE})
INSERT INTO usage_daily_rollup AS t (customer_id, meter_id, dims_key, day, total, events, maximum, uniques, latest_value,
                                     latest_at, latest_event)
{_DAILY % ("NULL::numeric, NULL::timestamptz, NULL::bigint", "IS NULL")}
UNION ALL
{_DAILY % (f"(array_agg(f.latest_value {_BY_AT}, max(f.latest_at), (array_agg(f.latest_event {_BY_AT}", "IS NOT NULL")}
ON CONFLICT (customer_id, meter_id, day, dims_key) DO UPDATE SET {_MERGE}
"""  # noqa: S608 - constants


def range_end(*, lo: int, cut: datetime, chunk: int) -> tuple[int, int]:
    """The last id of the step after watermark ``lo`` and how many events it covers ((lo, 0) if none):
    at most ``chunk`` ids, none from the first one received at or after ``cut`` on."""
    with connection.cursor() as cursor:
        cursor.execute(RANGE_SQL, {"lo": lo, "chunk": chunk, "cut": cut})
        upto, covered = cursor.fetchone()
    return (upto, covered) if upto is not None else (lo, 0)


def merge_range(*, lo: int, hi: int) -> None:
    """The billable events with lo < id <= hi merged into the hourly and daily rollups (see MERGE_SQL)."""
    latest = list(Meter.objects.filter(aggregation=Meter.Aggregation.LATEST).values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute(MERGE_SQL, {"lo": lo, "hi": hi, "latest": latest})
