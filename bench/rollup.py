"""make bench-rollup: hourly rollups and invoices from rollups on a throwaway PostgreSQL.

Starts a throwaway PostgreSQL (bench/_pg.py: the same server as bench-ingest), migrates, imports a
catalog (three meters, one plan whose rate card changes on 2026-10-15 at 12:30, so one hour is priced
from raw events), creates the customers through the services, each with a project and subscribed from
2026-10-01, then loads N synthetic events for October 2026 with one ``COPY ... FROM STDIN`` (uniform
over the customers and over the month up to its last ``--hours`` hours; every event received a minute
after its usage time, long before the rollup lag), then ``VACUUM (ANALYZE)``.

Measured in the same run, alternating, ``--repeat`` times each:
  - baseline: ``CREATE TEMP TABLE ... AS SELECT <key>, sum, count, max FROM usage_event GROUP BY <key>``
    (the rollup's key: customer, project, meter, dimensions, UTC hour), so the result is materialised,
    with the plan PostgreSQL chooses (at 10M events: a parallel sort);
  - hashed baseline: the same statement with the plan the rebuild uses (a hash aggregate over one
    sequential scan), the fastest plain ``GROUP BY`` measured here: a second, stricter reference;
  - floor: the baseline's rows written to an ordinary, logged table plus one index on (customer, meter,
    hour), in one transaction, with the rebuild's plan: what any durable rollup that invoices can
    range-read costs at least;
  - ``rollup_full(now=...)``: the production rebuild (one ``INSERT ... SELECT ... GROUP BY``).
Then ``--repeat`` times: COPY one more hour of events (N / hours-in-the-load, or ``--hour-events``; 1 in 20
of them late, with usage in the hour before) and time ``rollup_until_current(now=...)`` (with ``--ab R``,
first R rolled-back alternations of its SQL and Python implementations, bench/_rollup_ab.py). Then every customer's draft
refreshed as the beat does it (``drafts_refresh``: one ``period_snapshot`` of the period's shared reads,
timed, then ``invoice_draft_refresh`` per customer, timed per call), twice (the first pass creates the
drafts; the second finds nothing new, so it computes each invoice and writes nothing).

Prints a JSON summary and writes it to bench/results/rollup-<UTC timestamp>.json. Every loop is
bounded; PostgreSQL is stopped and its files removed at the end, also on error or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from _pg import free_port, pg_start, pg_stop

ROOT = Path(__file__).resolve().parent.parent
UTC = timezone.utc
MONTH = datetime(2026, 10, 1, tzinfo=UTC)
MONTH_END = datetime(2026, 11, 1, tzinfo=UTC)
DELAY = timedelta(minutes=1)  # received_at - usage_at of every event

CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
  - {key: api_calls, name: API calls, unit: call, aggregation: count}
  - {key: agents, name: Agents, unit: agent, aggregation: unique_count, unique_by: agent}
plans:
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2026-01-01T00:00:00Z"
    base_fee: "49.00"
    charges:
      - meter: llm_tokens
        model: graduated
        markup: {dimension: model, percent: {gpt-4o: "20"}, default: "0"}
        tiers:
          - {up_to: 1000000, unit_price: "0.000013"}
          - {up_to: 10000000, unit_price: "0.0000071", flat_price: "0.5"}
          - {up_to: null, unit_price: "0.00000333"}
      - {meter: api_calls, model: package, package_size: 100, package_price: "0.33", free_units: 500}
      - {meter: agents, model: per_unit, unit_price: "1.10"}
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2026-10-15T12:30:00Z"
    base_fee: "49.00"
    charges:
      - meter: llm_tokens
        model: volume
        tiers:
          - {up_to: 5000000, unit_price: "0.000011"}
          - {up_to: null, unit_price: "0.000007"}
      - {meter: api_calls, model: flat_overage, flat_price: "5", included: 1000, overage_unit_price: "0.004"}
      - {meter: agents, model: per_unit, unit_price: "1.20"}
"""
MODELS = ("gpt-4o", "claude", "llama")
LLM_DIMS = [json.dumps({"model": m, "direction": d}) for m in MODELS for d in ("input", "output")]
API_DIMS = [json.dumps({"model": m}) for m in MODELS]
AGENT_DIMS = [json.dumps({"agent": f"agent-{k:02d}"}) for k in range(20)]
COLUMNS = ("customer_id, project_id, meter_id, event_id, quantity, timestamp, usage_at, received_at, dimensions, trace, "
           "run_id, billable, reason, schema_version, corrects, fingerprint")

BASELINE_SELECT = """
SELECT customer_id, project_id, meter_id, dimensions, date_trunc('hour', usage_at, 'UTC') AS hour,
       sum(quantity) AS total, count(*) AS events, max(quantity) AS maximum
FROM usage_event
GROUP BY customer_id, project_id, meter_id, dimensions, date_trunc('hour', usage_at, 'UTC')
"""
BASELINE_SQL = "CREATE TEMP TABLE bench_baseline AS" + BASELINE_SELECT
# The floor of any rollup that is durable and range-readable: the baseline's rows written to an ordinary
# (logged) table and one index on (customer, meter, hour) built after them, in one transaction, with the
# rebuild's plan (rollups.HASH_AGGREGATION) and its memory for the index. What the rebuild costs beyond it
# is its own work: the dimension-set keys, the daily rows, a wider unique key, the primary key.
FLOOR_SQL = (
    "CREATE TABLE bench_floor AS" + BASELINE_SELECT + "WITH NO DATA",
    "INSERT INTO bench_floor" + BASELINE_SELECT,
    "SET LOCAL maintenance_work_mem = '512MB'",
    "CREATE INDEX bench_floor_range ON bench_floor (customer_id, meter_id, hour)",
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Minutes:
    """``YYYY-MM-DD HH:MM:`` of a minute since MONTH, cached: formatting a timestamp is then two ints."""

    def __init__(self) -> None:
        self.cache: dict[int, str] = {}

    def __call__(self, minute: int) -> str:
        text = self.cache.get(minute)
        if text is None:
            text = self.cache[minute] = (MONTH + timedelta(minutes=minute)).strftime("%Y-%m-%d %H:%M:")
        return text


def event_lines(*, first: int, count: int, start: datetime, span: timedelta, customers: list[tuple[int, int]],
                meters: dict[str, int], late_every: int = 0, chunk: int = 50_000) -> Iterator[str]:
    """``count`` events numbered from ``first`` as COPY text, ``chunk`` lines per string. Usage times evenly
    spaced over [start, start + span) in id order (so ``received_at`` grows with the id, as at ingest);
    customer, meter, dimensions and quantity from a 64-bit LCG. Every ``late_every``-th event (if set)
    is late: usage an hour before its place, received at its place."""
    minutes = Minutes()
    base_us = (start - MONTH) // timedelta(microseconds=1)
    span_us = span // timedelta(microseconds=1)
    delay_min = DELAY // timedelta(minutes=1)
    n_customers = len(customers)
    llm, api, agents = meters["llm_tokens"], meters["api_calls"], meters["agents"]
    x = 0x9E3779B97F4A7C15 ^ first
    lines: list[str] = []
    for i in range(count):
        n = first + i
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        customer_id, project_id = customers[(x >> 33) % n_customers]
        project = str(project_id) if (x >> 20) & 1 else "\\N"
        kind = (x >> 24) % 10
        if kind < 7:
            meter, quantity, dims = llm, 1 + (x >> 40) % 4000, LLM_DIMS[(x >> 12) % 6]
        elif kind < 9:
            meter, quantity, dims = api, 1, API_DIMS[(x >> 12) % 3]
        else:
            meter, quantity, dims = agents, 1, AGENT_DIMS[(x >> 12) % 20]
        at = base_us + i * span_us // count
        received_minute = at // 60_000_000 + delay_min
        if late_every and n % late_every == 0:
            at -= 3_600_000_000
        minute, rest = divmod(at, 60_000_000)
        seconds = f"{rest // 1_000_000:02d}.{rest % 1_000_000:06d}+00"
        usage = minutes(minute) + seconds
        lines.append(f"{customer_id}\t{project}\t{meter}\tev-{n:010d}\t{quantity}\t{usage}\t{usage}\t"
                     f"{minutes(received_minute)}{seconds}\t{dims}\t\\N\t\tt\t\t1\t\t{n:032x}\n")
        if len(lines) >= chunk:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


def copy_events(database_url: str, lines: Iterator[str]) -> tuple[float, float]:
    """One COPY of ``lines`` into usage_event, committed. Returns (wall seconds, of which generating)."""
    import psycopg

    generating = 0.0
    start = time.perf_counter()
    with psycopg.connect(database_url) as db, db.cursor() as cur, cur.copy(f"COPY usage_event ({COLUMNS}) FROM STDIN") as copy:
        while True:
            t = time.perf_counter()
            text = next(lines, None)
            generating += time.perf_counter() - t
            if text is None:
                break
            copy.write(text)
    return time.perf_counter() - start, generating


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def seed(n_customers: int, start: datetime = MONTH) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """Catalog, customers (each with a project), subscriptions from ``start``: all through the services."""
    from billing.catalog.models import Meter, Plan
    from billing.catalog.services import catalog_import, subscription_set
    from billing.customers.services import customer_create, project_create

    catalog_import(text=CATALOG, actor="bench")
    plan = Plan.objects.get(key="pro")
    customers = []
    for index in range(n_customers):
        customer = customer_create(external_id=f"cust-{index:05d}", name=f"Customer {index}")
        project = project_create(customer=customer, key="app")
        subscription_set(customer=customer, plan=plan, start=start, now=start, actor="bench")
        customers.append((customer.pk, project.pk))
    return customers, dict(Meter.objects.values_list("key", "pk"))


def sql_one(sql: str, params: list[Any] | None = None) -> Any:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone() if cursor.description else None
    return row[0] if row else None


def baseline(*, hashed: bool = False) -> int:
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_baseline")
        if hashed:
            from billing.usage.rollups import HASH_AGGREGATION

            cursor.execute(HASH_AGGREGATION)
        cursor.execute(BASELINE_SQL)
        cursor.execute("SELECT count(*) FROM bench_baseline")
        row = cursor.fetchone()
        cursor.execute("DROP TABLE bench_baseline")
    return int(row[0]) if row else 0


def floor() -> None:
    from django.db import connection, transaction

    from billing.usage.rollups import HASH_AGGREGATION

    sql_one("DROP TABLE IF EXISTS bench_floor")
    with transaction.atomic(), connection.cursor() as cursor:
        for sql in (HASH_AGGREGATION, *FLOOR_SQL):
            cursor.execute(sql)
    sql_one("DROP TABLE bench_floor")


def explain(now: datetime) -> dict[str, str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the baseline and of the rebuild's INSERTs as the rebuild runs them
    (truncated table, its memory and plan settings, indexes dropped), each rolled back."""
    from django.db import connection, transaction

    from billing.usage.rollups import bulk_load_begin, full_statements

    plans = {}
    upto = sql_one("SELECT max(id) FROM usage_event")
    statements = [("baseline", BASELINE_SQL, None)] + [(f"full_rollup_insert_{n}", sql, params)
                                                      for n, (sql, params) in enumerate(full_statements(upto), 1)]
    for name, sql, params in statements:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                if name != "baseline":  # the daily rows are made from the hourly ones: those stay
                    cursor.execute("TRUNCATE usage_daily_rollup" if "INTO usage_daily_rollup" in sql
                                   else "TRUNCATE usage_hourly_rollup, usage_daily_rollup")
                    bulk_load_begin(cursor)
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
                plans[name] = "\n".join(row[0] for row in cursor.fetchall())
                raise _Rollback
        except _Rollback:
            pass
    return plans


class _Rollback(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000, help="events in the main load")
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="baseline/full-rollup pairs, and incremental hours")
    parser.add_argument("--check", action="store_true", help="after the incremental runs, rollup_check() (slow: Python)")
    parser.add_argument("--explain", action="store_true", help="store EXPLAIN ANALYZE of baseline and rebuild")
    parser.add_argument("--hour-events", type=int, default=0, help="events per incremental hour (default: the load's rate)")
    parser.add_argument("--ab", type=int, default=0, help="per incremental hour, this many rolled-back SQL/Python "
                        "alternations of the incremental step first (bench/_rollup_ab.py)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below

    work = Path(tempfile.mkdtemp(prefix="tollgate-bench-rollup-"))
    os.chmod(work, 0o755)
    pg_dir = work / "pg"
    results: dict[str, Any] = {"events": args.events, "customers": args.customers, "repeat": args.repeat,
                               "cpus": os.cpu_count(), "started": datetime.now(UTC).isoformat(timespec="seconds"),
                               "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    try:
        database_url = pg_start(pg_dir, free_port(), "tollgate")
        os.environ.update({"DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "portal.settings",
                           "TOLLGATE_DATA_DIR": str(work / "var"), "LOG_LEVEL": "WARNING"})
        for name in ("REDIS_URL", "DJANGO_DEBUG", "STRIPE_SECRET_KEY", "TIGERBEETLE_ADDRESSES", "LEDGER_BACKEND"):
            os.environ.pop(name, None)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        results["postgresql"] = sql_one("SHOW server_version")
        measure(args, database_url, results)
        results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
        results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        print(json.dumps(results, indent=2), flush=True)
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / f"rollup-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json").write_text(json.dumps(results, indent=2))
    finally:
        if "django.db" in sys.modules:
            from django.db import connections

            connections.close_all()
        pg_stop(pg_dir)
        shutil.rmtree(work, ignore_errors=True)


def say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", flush=True)


def measure(args: argparse.Namespace, database_url: str, results: dict[str, Any]) -> None:
    """The month loaded, the rebuild against its baselines, the incremental hours, then the invoices."""
    customers, meters, main_end = load_month(args, database_url, results)
    now = main_end + DELAY + timedelta(minutes=1)  # every event received more than LAG before
    compare_rebuild(args, now, results)
    if args.explain:
        results["explain"] = explain(now)
    incremental_hours(args, database_url, results, customers, meters, main_end)
    if args.check:
        from billing.usage.rollups import rollup_check

        seconds, drift = timed(rollup_check)
        results["rollup_check"] = {"seconds": round(seconds, 1), "drift": len(drift), "first": drift[:5]}
        say(f"rollup_check: {len(drift)} differences in {seconds:.1f} s")
        if drift:
            raise SystemExit(f"rollup drift: {drift[:5]}")
    for name in ("invoices_first_pass", "invoices_second_pass"):
        results[name] = invoice_pass()
        say(f"{name}: {results[name]}")


def load_month(args: argparse.Namespace, database_url: str,
               results: dict[str, Any]) -> tuple[list[tuple[int, int]], dict[str, int], datetime]:
    """Seed, then COPY the main load over the month but its last ``--repeat`` hours (the incremental
    runs'), then VACUUM (ANALYZE). Returns the customers, the meters and the end of the load."""
    seconds, (customers, meters) = timed(lambda: seed(args.customers))
    results["seed_s"] = round(seconds, 2)
    say(f"seeded {args.customers} customers in {seconds:.1f} s")

    main_hours = int((MONTH_END - MONTH) / timedelta(hours=1)) - args.repeat  # the last hours: incremental runs
    main_end = MONTH + timedelta(hours=main_hours)
    load_s, gen_s = copy_events(database_url, event_lines(first=0, count=args.events, start=MONTH,
                                                          span=main_end - MONTH, customers=customers, meters=meters))
    vacuum_s, _ = timed(lambda: sql_one("VACUUM (ANALYZE) usage_event"))
    results["load"] = {"rows": args.events, "seconds": round(load_s, 1), "rows_per_s": round(args.events / load_s),
                       "python_generating_s": round(gen_s, 1), "vacuum_analyze_s": round(vacuum_s, 1),
                       "table_mb": round(sql_one("SELECT pg_table_size('usage_event')") / 2**20),
                       "indexes_mb": round(sql_one("SELECT pg_indexes_size('usage_event')") / 2**20)}
    say(f"load: {results['load']}")
    return customers, meters, main_end


def _runs(runs: list[float]) -> dict[str, Any]:
    return {"median_s": round(statistics.median(runs), 2), "runs_s": [round(s, 2) for s in runs]}


def compare_rebuild(args: argparse.Namespace, now: datetime, results: dict[str, Any]) -> None:
    """``--repeat`` rounds of baseline, hashed baseline, floor and full rollup, alternated; medians and ratios."""
    from billing.usage.models import DailyRollup, HourlyRollup
    from billing.usage.rollups import rollup_full

    base_runs, hashed_runs, floor_runs, full_runs, groups = [], [], [], [], 0
    for run in range(args.repeat):
        # Each timed step starts after a CHECKPOINT (untimed): the floor and the rebuild write gigabytes of
        # WAL, and the checkpoint they leave pending would otherwise be paid by the step after them.
        sql_one("CHECKPOINT")
        seconds, groups = timed(baseline)
        base_runs.append(seconds)
        say(f"baseline {run + 1}: {seconds:.1f} s, {groups} groups")
        sql_one("CHECKPOINT")
        seconds, _ = timed(lambda: baseline(hashed=True))
        hashed_runs.append(seconds)
        say(f"hashed baseline {run + 1}: {seconds:.1f} s")
        sql_one("CHECKPOINT")
        seconds, _ = timed(floor)
        floor_runs.append(seconds)
        say(f"floor {run + 1}: {seconds:.1f} s")
        sql_one("CHECKPOINT")
        seconds, covered = timed(lambda: rollup_full(now=now))
        full_runs.append(seconds)
        say(f"full rollup {run + 1}: {seconds:.1f} s, {covered} events")
        if covered != args.events:
            raise SystemExit(f"rollup_full covered {covered} events, expected {args.events}")
    rollups = HourlyRollup.objects.count()
    if rollups != groups:
        raise SystemExit(f"{rollups} rollup rows but the plain GROUP BY has {groups} groups")
    results["baseline_group_by"] = {**_runs(base_runs), "groups": groups}
    results["full_rollup"] = {**_runs(full_runs), "rollup_rows": rollups,
                              "rollup_mb": round(sql_one("SELECT pg_total_relation_size('usage_hourly_rollup')") / 2**20),
                              "daily_rows": DailyRollup.objects.count(),
                              "daily_mb": round(sql_one("SELECT pg_total_relation_size('usage_daily_rollup')") / 2**20)}
    results["baseline_hashed"] = _runs(hashed_runs)
    results["floor"] = _runs(floor_runs)
    results["full_over_baseline"] = round(statistics.median(full_runs) / statistics.median(base_runs), 2)
    results["full_over_hashed_baseline"] = round(statistics.median(full_runs) / statistics.median(hashed_runs), 2)
    results["floor_over_baseline"] = round(statistics.median(floor_runs) / statistics.median(base_runs), 2)
    results["full_over_floor"] = round(statistics.median(full_runs) / statistics.median(floor_runs), 2)
    say(f"full/baseline: {results['full_over_baseline']}, full/hashed baseline: "
        f"{results['full_over_hashed_baseline']}, floor/baseline: {results['floor_over_baseline']}, "
        f"full/floor: {results['full_over_floor']}")


def incremental_hours(args: argparse.Namespace, database_url: str, results: dict[str, Any],
                      customers: list[tuple[int, int]], meters: dict[str, int], main_end: datetime) -> None:
    """``--repeat`` times: COPY one more hour of events (1 in 20 late), then ``rollup_until_current``."""
    from billing.usage.rollups import rollup_until_current

    main_hours = int((main_end - MONTH) / timedelta(hours=1))
    per_hour = args.hour_events or args.events // main_hours
    inc_runs, inc_load, ab = [], [], []
    for run in range(args.repeat):
        hour = main_end + timedelta(hours=run)
        load_s, _ = copy_events(database_url, event_lines(
            first=args.events + run * per_hour, count=per_hour, start=hour, span=timedelta(hours=1),
            customers=customers, meters=meters, late_every=20))
        inc_load.append(load_s)
        now = hour + timedelta(hours=1) + DELAY + timedelta(minutes=1)
        if args.ab:
            from _rollup_ab import incremental_ab

            ab.append(incremental_ab(now=now, rounds=args.ab, expected=per_hour))
            say(f"incremental hour {run + 1}, A/B: {ab[-1]}")
        start = time.perf_counter()
        covered = rollup_until_current(now=now)
        seconds = time.perf_counter() - start
        inc_runs.append(seconds)
        say(f"incremental hour {run + 1}: {per_hour} events loaded in {load_s:.2f} s, rolled up in {seconds:.2f} s")
        if covered != per_hour:
            raise SystemExit(f"incremental run covered {covered} events, expected {per_hour}")
    results["incremental_hour"] = {"events": per_hour, "median_s": round(statistics.median(inc_runs), 3),
                                   "runs_s": [round(s, 3) for s in inc_runs], "late_share": 0.05,
                                   "copy_s": [round(s, 2) for s in inc_load]}
    if ab:
        results["incremental_ab"] = ab


def invoice_pass() -> dict[str, Any]:
    """Every customer's draft refreshed as ``drafts_refresh`` does it: one period snapshot, then one
    ``invoice_draft_refresh`` per customer, timed per call."""
    from billing.customers.models import Customer
    from billing.invoicing.services import invoice_draft_refresh
    from billing.invoicing.snapshot import period_snapshot

    everyone = Customer.objects.count()
    latencies, totals = [], 0
    start = time.perf_counter()
    snapshot = period_snapshot(start=MONTH, end=MONTH_END)  # what drafts_refresh reads once per period
    snapshot_s = time.perf_counter() - start
    if len(snapshot.customers) != everyone:
        raise SystemExit(f"{len(snapshot.customers)} subscribed customers of {everyone}")
    for customer in snapshot.customers:
        t = time.perf_counter()
        invoice = invoice_draft_refresh(customer=customer, period_start=MONTH, snapshot=snapshot)
        latencies.append(time.perf_counter() - t)
        if invoice is None:
            raise SystemExit(f"no invoice for {customer.external_id}")
        totals += invoice.total_minor
    total_s = time.perf_counter() - start
    return {"customers": everyone, "snapshot_ms": round(snapshot_s * 1000, 1),
            "p50_ms": round(pct(latencies, 0.5) * 1000, 1),
            "p99_ms": round(pct(latencies, 0.99) * 1000, 1), "max_ms": round(max(latencies) * 1000, 1),
            "total_s": round(total_s, 1), "sum_of_totals_minor": totals}


if __name__ == "__main__":
    main()
