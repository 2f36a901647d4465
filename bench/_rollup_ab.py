"""bench/rollup.py ``--ab``: the incremental step on PostgreSQL, set-based SQL against the Python path it
replaced, on the same events in the same run.

For one loaded hour, ``rounds`` alternations (the order swapped each round) of ``rollup_until_current``
through each implementation, each inside a transaction rolled back after the timing, so both start from
the same stored rows and the same watermark. The Python path is the production code's own
(``rollups._range_end_python`` and ``rollups._apply(rollups._aggregate(...))``, what SQLite runs), put in
place of the PostgreSQL one for the run. In its first round each path's resulting rows are digested
(untimed): the two digests must be equal.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any

# Every stored column but the row ids, in a fixed order: equal digests, equal rows.
DIGEST_SQL = """
SELECT md5(string_agg(x, '|' ORDER BY x COLLATE "C")) FROM (
  SELECT concat_ws(',', customer_id, project_id, project_slot, meter_id, dims_key, hour, total, events, maximum, uniques,
                   latest_value, latest_at, latest_event) AS x FROM usage_hourly_rollup
  UNION ALL
  SELECT concat_ws(',', 'd', customer_id, meter_id, dims_key, day, total, events, maximum, uniques, latest_value,
                   latest_at, latest_event) FROM usage_daily_rollup
  UNION ALL
  SELECT concat_ws(',', 's', key, dimensions) FROM usage_dimension_set) rows
"""


@contextmanager
def python_path() -> Iterator[None]:
    from billing.usage import rollups

    saved = rollups._range_end, rollups._apply_range
    rollups._range_end = rollups._range_end_python
    rollups._apply_range = lambda lo, hi: rollups._apply(rollups._aggregate(lo, hi))
    try:
        yield
    finally:
        rollups._range_end, rollups._apply_range = saved


class _Rollback(Exception):
    pass


def _run(path: str, now: datetime, digest: bool) -> tuple[float, int, str | None]:
    from django.db import connection, transaction

    from billing.usage.rollups import rollup_until_current

    result: tuple[float, int, str | None] = (0.0, 0, None)
    try:
        with transaction.atomic():
            with python_path() if path == "python" else nullcontext():
                start = time.perf_counter()
                covered = rollup_until_current(now=now)
                seconds = time.perf_counter() - start
            text = None
            if digest:
                with connection.cursor() as cursor:
                    cursor.execute(DIGEST_SQL)
                    text = cursor.fetchone()[0]
            result = (seconds, covered, text)
            raise _Rollback
    except _Rollback:
        pass
    return result


def incremental_ab(*, now: datetime, rounds: int, expected: int) -> dict[str, Any]:
    """Both implementations over the events above the watermark, alternated ``rounds`` times; medians."""
    load_before = [round(v, 2) for v in os.getloadavg()]
    runs: dict[str, list[float]] = {"sql": [], "python": []}
    digests: dict[str, str | None] = {}
    for r in range(rounds):
        for path in ("sql", "python") if r % 2 == 0 else ("python", "sql"):
            seconds, covered, digest = _run(path, now, digest=r < 2)
            if covered != expected:
                raise SystemExit(f"{path} path covered {covered} events, expected {expected}")
            runs[path].append(seconds)
            if digest is not None:
                digests[path] = digest
    if digests["sql"] != digests["python"]:
        raise SystemExit(f"the SQL and the Python paths wrote different rows: {digests}")
    sql, python = statistics.median(runs["sql"]), statistics.median(runs["python"])
    return {"events": expected, "sql_median_s": round(sql, 3), "python_median_s": round(python, 3),
            "sql_runs_s": [round(s, 3) for s in runs["sql"]], "python_runs_s": [round(s, 3) for s in runs["python"]],
            "python_over_sql": round(python / sql, 1), "sql_events_per_s": round(expected / sql),
            "python_events_per_s": round(expected / python), "same_rows": True,
            "load_average": [load_before, [round(v, 2) for v in os.getloadavg()]]}
