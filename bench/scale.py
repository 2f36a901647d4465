"""make bench-scale: the growth curve of the event table: the same work timed at 1M, 10M and 30M raw events.

Starts a throwaway PostgreSQL (bench/_pg.py), migrates (usage_event partitioned by month), imports the
catalog of bench/rollup.py, creates the customers through the services (each with a project, subscribed from
2024-01-01). Then grows the table in steps, one month of ``--per-month`` events at a time:

  - the **measured month** (2026-11, 1M events by default) first, straight into PostgreSQL with
    ``INSERT ... SELECT FROM generate_series`` in the shape ingest writes (the event row and its key in
    one statement; customers, meters, dimensions and quantities from a hash of the row number; usage times
    spread evenly over the month), then rolled up by the production rebuild (``rollup_full``);
  - then **history**, the months before it, newest first, until the table holds the step's size; their ids
    are below the measured month's (as older events' are). Each month is built as a table of its own and
    attached as its partition (indexes built in one sorted pass, the append-only trigger cloned onto it),
    then its keys inserted into the key table in key order. History is not rolled up: the rollup tables
    hold the measured month (the reads timed go to its rows by key range), so the incremental run is
    not asked to read 29M events at once.

At each size, after ``VACUUM (ANALYZE)`` and a ``CHECKPOINT`` (the loaded months written out, as a
server's old months long have been), the real code paths. First one round right after the load (reported
as ``after_load``: an hour rolled up, the drafts refreshed, the usage queried): the loaded months have
filled shared_buffers, and this round reads its pages back. Then the timed round, in the steady state of
a server whose rollup runs every hour and whose drafts are refreshed every ten minutes:
  - **rollup**: one more hour of the measured month (``--hour-events``) inserted with fresh ids, then the beat
    task's service ``rollup_until_current``;
  - **invoice drafts**: ``period_snapshot`` of the measured month, then ``invoice_draft_refresh`` for every
    ``--sample``-th customer, twice (the first pass updates the drafts with the new hour, the second finds
    nothing new: computation alone); the drafts exist from the measured month's rebuild on (one untimed
    pass then), so that the first pass updates a draft at every size, as beat does;
  - **usage queries**: the usage API's selector ``usage_aggregate`` (the month by day, grouped by
    dimension ``model``) and the events list's first page (``events_list``) for the same customers.
Each figure is reported with the time per event of the data it reads, the CPU time per event (this
process's and its PostgreSQL backend's, which another load on the machine does not inflate as it does the
wall time) and the load average beside it: the machine may be shared (run it with ``nice``). Prints JSON
and writes bench/results/scale-<UTC>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from _pg import free_port, pg_start, pg_stop
from rollup import AGENT_DIMS, API_DIMS, LLM_DIMS, pct, seed

ROOT = Path(__file__).resolve().parent.parent
UTC = timezone.utc
MEASURED = datetime(2026, 11, 1, tzinfo=UTC)
MEASURED_END = datetime(2026, 12, 1, tzinfo=UTC)
SUBSCRIBED = datetime(2024, 1, 1, tzinfo=UTC)
MEASURED_IDS = 1_000_000_000  # the measured month's ids start here; history's below; the sequence above
COLUMNS = ("customer_id, project_id, meter_id, event_id, quantity, timestamp, usage_at, received_at, dimensions, "
           "trace, run_id, billable, reason, schema_version, corrects, fingerprint")

# Rows ``lo`` .. ``hi - 1`` of a generated month: usage times evenly over [start, start + span); a row's
# hash picks its customer (and whether it names the project), meter, dimensions and quantity, as
# bench/rollup.py's generator does (70% tokens, 20% calls, 10% agents). ``id0 = NULL``: ids from the sequence.
ROWS_SQL = """
SELECT coalesce(%(id0)s::bigint + g, nextval('usage_event_id_seq')), (%(cust)s::bigint[])[c],
       CASE WHEN (h >> 20) & 1 = 1 THEN (%(proj)s::bigint[])[c] END,
       CASE WHEN kind < 7 THEN %(llm)s WHEN kind < 9 THEN %(api)s ELSE %(agents)s END::bigint,
       'ev-' || %(tag)s || '-' || g, CASE WHEN kind < 7 THEN 1 + (h >> 11) %% 4000 ELSE 1 END, at, at,
       at + interval '1 minute',
       CASE WHEN kind < 7 THEN (%(llm_dims)s::jsonb[])[1 + (h >> 12) %% 6]
            WHEN kind < 9 THEN (%(api_dims)s::jsonb[])[1 + (h >> 12) %% 3]
            ELSE (%(agent_dims)s::jsonb[])[1 + (h >> 12) %% 20] END,
       NULL, '', true, '', 1, '', md5(%(tag)s || g)
FROM (SELECT g, h, %(start)s::timestamptz + (g - %(lo)s) * (%(span)s::interval / (%(hi)s - %(lo)s)) AS at,
             (h >> 24) %% 10 AS kind, 1 + (h >> 3) %% %(nc)s AS c
      FROM (SELECT g, (g * 2654435761 + 12345) %% 4294967296 AS h
            FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) g) s) r
"""
# As ingest writes: each event and its key in one statement.
LOAD_SQL = f"""
WITH ins AS (INSERT INTO usage_event (id, {COLUMNS}) {ROWS_SQL} RETURNING customer_id, event_id, id, usage_at)
INSERT INTO usage_event_key (customer_id, event_id, event, usage_at) SELECT * FROM ins
"""  # noqa: S608 - constants
# History, fast: the month built as a table of its own, then attached as the month's partition (PostgreSQL
# builds its indexes in one sorted pass each and clones the append-only trigger onto it); its keys
# inserted in key order.
HISTORY_SQL = (
    "CREATE TABLE {name} (LIKE usage_event INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
    f"INSERT INTO {{name}} (id, {COLUMNS}) {ROWS_SQL}",
    "ALTER TABLE usage_event ATTACH PARTITION {name} FOR VALUES FROM (%(start)s) TO (%(end)s)",
    "INSERT INTO usage_event_key (customer_id, event_id, event, usage_at) "
    "SELECT customer_id, event_id, id, usage_at FROM {name} ORDER BY customer_id, event_id",
)


def say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", flush=True)


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def sql(statement: str, params: Any = None) -> Any:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone() if cursor.description else None
    return row[0] if row else None


def months_before(month: datetime, n: int) -> datetime:
    index = month.year * 12 + month.month - 1 - n
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


class Loader:
    """Generated months straight into the event table (and the key table), in one statement each."""

    def __init__(self, customers: list[tuple[int, int]], meters: dict[str, int]) -> None:
        self.base = {"cust": [c for c, _ in customers], "proj": [p for _, p in customers], "nc": len(customers),
                     "llm": meters["llm_tokens"], "api": meters["api_calls"], "agents": meters["agents"],
                     "llm_dims": LLM_DIMS, "api_dims": API_DIMS, "agent_dims": AGENT_DIMS}

    def month(self, *, start: datetime, span: timedelta, lo: int, hi: int, id0: int | None, tag: str) -> float:
        from django.db import transaction

        from billing.usage.partitions import partitions_ensure

        began = time.perf_counter()
        partitions_ensure(now=start, ahead=0)  # the month's partition, as beat created it when it was current
        with transaction.atomic():
            sql(LOAD_SQL, {**self.base, "start": start, "span": span, "lo": lo, "hi": hi, "id0": id0, "tag": tag})
        return time.perf_counter() - began

    def history(self, *, start: datetime, end: datetime, lo: int, hi: int) -> float:
        from django.db import transaction

        from billing.usage.partitions import partition_name

        began = time.perf_counter()
        params = {**self.base, "start": start, "end": end, "span": end - start, "lo": lo, "hi": hi, "id0": 1,
                  "tag": f"{start:%Y%m}"}
        with transaction.atomic():
            for statement in HISTORY_SQL:
                sql(statement.format(name=partition_name(start)), params)
        return time.perf_counter() - began


def cpu_seconds() -> float:
    """CPU seconds so far of this process and of its PostgreSQL backend (from /proc: the server runs on this
    machine): what the work costs whatever else the machine runs, unlike the wall time."""
    from django.db import connection

    if getattr(connection, "bench_backend_pid", None) is None:
        connection.bench_backend_pid = sql("SELECT pg_backend_pid()")  # type: ignore[attr-defined]
    with open(f"/proc/{connection.bench_backend_pid}/stat") as stat:  # type: ignore[attr-defined]
        fields = stat.read().rsplit(")", 1)[1].split()  # after the command name: field 3 (state) on
    return time.process_time() + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Timed = tuple[list[float], float]  # each call's wall seconds, and the CPU seconds of all of them


def timed_each(fn: Any, items: list[Any]) -> Timed:
    out = []
    cpu = cpu_seconds()
    for item in items:
        began = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - began)
    return out, cpu_seconds() - cpu


def _stats(timed: Timed, events: int) -> dict[str, Any]:
    latencies, cpu = timed
    total = sum(latencies)
    return {"calls": len(latencies), "p50_ms": round(pct(latencies, 0.5) * 1000, 2),
            "p99_ms": round(pct(latencies, 0.99) * 1000, 2), "total_s": round(total, 2),
            "events_read": events, "us_per_event": round(total / max(events, 1) * 1e6, 3),
            "cpu_s": round(cpu, 2), "cpu_us_per_event": round(cpu / max(events, 1) * 1e6, 3)}


def sampled(every: int) -> list[Any]:
    """Every ``every``-th customer: those whose drafts and usage are timed."""
    from billing.customers.models import Customer

    return list(Customer.objects.order_by("pk"))[::every]


def drafts_pass(sample: list[Any]) -> tuple[Timed, float]:
    """``invoice_draft_refresh`` of the measured month for each customer of ``sample`` after one
    ``period_snapshot`` (what the beat task ``drafts_refresh`` does): their times, the snapshot's seconds."""
    from billing.invoicing.services import invoice_draft_refresh
    from billing.invoicing.snapshot import period_snapshot

    began = time.perf_counter()
    snapshot = period_snapshot(start=MEASURED, end=MEASURED_END)
    snapshot_s = time.perf_counter() - began
    by_pk = {c.pk: c for c in snapshot.customers}
    return timed_each(lambda c, s=snapshot, b=by_pk: invoice_draft_refresh(
        customer=b[c.pk], period_start=MEASURED, snapshot=s), sample), snapshot_s


def hour_rolled_up(args: argparse.Namespace, loader: Loader, hour: int) -> dict[str, Any]:
    """One more hour of the measured month (``--hour-events`` events, fresh ids) inserted as ingest writes
    it, then the beat task's service ``rollup_until_current``, timed."""
    from billing.usage.rollups import rollup_until_current

    start = MEASURED_END - timedelta(hours=args.repeat_hours - hour)
    loader.month(start=start, span=timedelta(hours=1), lo=0, hi=args.hour_events, id0=None, tag=f"h{hour}")
    began, cpu = time.perf_counter(), cpu_seconds()
    covered = rollup_until_current(now=start + timedelta(hours=1, minutes=5))
    seconds, cpu = time.perf_counter() - began, cpu_seconds() - cpu
    if covered != args.hour_events:
        raise SystemExit(f"the incremental run covered {covered} events, expected {args.hour_events}")
    return {"events": covered, "seconds": round(seconds, 3), "us_per_event": round(seconds / covered * 1e6, 2),
            "cpu_s": round(cpu, 3), "cpu_us_per_event": round(cpu / covered * 1e6, 2), "load_average": load_average()}


def measure(args: argparse.Namespace, loader: Loader, hour: int, size: int) -> dict[str, Any]:
    """One size: first the round right after the months were loaded (an hour rolled up, the drafts
    refreshed, the usage queried: reported as ``after_load``), then the timed round (another hour, the
    drafts twice, the usage queries), each figure with its load average."""
    from billing.usage.models import UsageEvent
    from billing.usage.selectors import events_list, usage_aggregate

    out: dict[str, Any] = {"events": size, "load_average_before": load_average()}
    sample = sampled(args.sample)
    after_load: dict[str, Any] = {"rollup_hour": hour_rolled_up(args, loader, hour)}

    def month_events(customers: list[Any] | None = None) -> int:
        events = UsageEvent.objects.filter(usage_at__gte=MEASURED, usage_at__lt=MEASURED_END)
        return (events if customers is None else events.filter(customer__in=customers)).count()

    after_load["invoices_first"] = _stats(drafts_pass(sample)[0], month_events(sample))
    usage = timed_each(lambda c: usage_aggregate(customer=c, start=MEASURED, end=MEASURED_END, granularity="day",
                                                 group_by=("model",)), sample)
    after_load["usage_month_by_day"] = _stats(usage, month_events(sample))
    out["after_load"] = {**after_load, "load_average": load_average()}
    say(f"{size:,}: right after the load: {after_load}")

    out["rollup_hour"] = hour_rolled_up(args, loader, hour + 1)
    say(f"{size:,}: rollup of one hour, {out['rollup_hour']}")
    sampled_events = month_events(sample)
    for name in ("invoices_first", "invoices_second"):
        latencies, snapshot_s = drafts_pass(sample)
        out[name] = {**_stats(latencies, sampled_events), "snapshot_ms": round(snapshot_s * 1000, 1),
                     "load_average": load_average()}
        say(f"{size:,}: {name} {out[name]}")
    usage = timed_each(lambda c: usage_aggregate(customer=c, start=MEASURED, end=MEASURED_END, granularity="day",
                                                 group_by=("model",)), sample)
    out["usage_month_by_day"] = {**_stats(usage, sampled_events), "load_average": load_average()}
    page = timed_each(lambda c: events_list(customer_pks=[c.pk], limit=100), sample)
    out["events_first_page"] = {**_stats(page, 100 * len(sample)), "load_average": load_average()}
    say(f"{size:,}: usage {out['usage_month_by_day']}, events page {out['events_first_page']}")
    out["measured_month_events"] = month_events()
    out["table_mb"] = round(sql("SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                                "WHERE inhparent = 'usage_event'::regclass") / 2**20)
    out["keys_mb"] = round(sql("SELECT pg_total_relation_size('usage_event_key')") / 2**20)
    return out


def grow(args: argparse.Namespace, loader: Loader, sizes: list[int], results: dict[str, Any]) -> None:
    from billing.usage.rollups import rollup_full

    per_month = args.per_month
    seconds = loader.month(start=MEASURED, span=MEASURED_END - MEASURED - timedelta(hours=args.repeat_hours),
                           lo=0, hi=per_month, id0=MEASURED_IDS, tag="m")
    sql("SELECT setval('usage_event_id_seq', %s)", [MEASURED_IDS * 2])
    sql("VACUUM (ANALYZE) usage_event, usage_event_key")
    began = time.perf_counter()
    rollup_full(now=MEASURED_END + timedelta(days=1))  # the production rebuild of the measured month
    results["measured_month"] = {"events": per_month, "load_s": round(seconds, 1),
                                 "rollup_full_s": round(time.perf_counter() - began, 1), "load_average": load_average()}
    drafts_pass(sampled(args.sample))  # the drafts exist from here on, as from a period's first refresh in production
    say(f"measured month: {results['measured_month']}")
    history_rows, months_back, steps = 0, 0, []
    for hour, size in enumerate(sizes):
        target = size - per_month
        load_s = 0.0
        while history_rows < target:
            months_back += 1
            first = months_before(MEASURED, months_back)
            count = min(per_month, target - history_rows)
            lo = history_rows
            load_s += loader.history(start=first, end=months_before(MEASURED, months_back - 1), lo=lo, hi=lo + count)
            history_rows += count
            say(f"history {first:%Y-%m}: {count:,} events (load {load_s:.0f} s so far)")
        began = time.perf_counter()
        sql("VACUUM (ANALYZE) usage_event, usage_event_key, usage_hourly_rollup, usage_daily_rollup")
        vacuum_s = time.perf_counter() - began
        began = time.perf_counter()
        sql("CHECKPOINT")  # the loaded months written out, as a server's old months long have been
        step = {"history_load_s": round(load_s, 1), "vacuum_analyze_s": round(vacuum_s, 1),
                "checkpoint_s": round(time.perf_counter() - began, 1),
                "partitions": sql("SELECT count(*) FROM pg_inherits WHERE inhparent = 'usage_event'::regclass")}
        step.update(measure(args, loader, 2 * hour, size + args.hour_events * 2 * (hour + 1)))
        steps.append(step)
        results["steps"] = steps
        write(results, partial=True)


def write(results: dict[str, Any], *, partial: bool = False) -> None:
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    name = results.setdefault("file", f"scale-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json")
    (out / name).write_text(json.dumps({**results, "partial": partial}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000,30000000", help="table sizes, comma-separated")
    parser.add_argument("--per-month", type=int, default=1_000_000, help="events per generated month")
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=5, help="time invoices and queries for every n-th customer")
    parser.add_argument("--hour-events", type=int, default=20_000, help="events of the hour rolled up at each size")
    parser.add_argument("--port", type=int, default=0, help="the throwaway server's port (default: a free one)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    args.repeat_hours = 2 * len(sizes)  # two hours per size: right after the load, then the timed one
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    work = Path(tempfile.mkdtemp(prefix="tollgate-bench-scale-"))
    os.chmod(work, 0o755)
    pg_dir = work / "pg"
    results: dict[str, Any] = {"sizes": sizes, "per_month": args.per_month, "customers": args.customers,
                               "sample_every": args.sample, "hour_events": args.hour_events, "cpus": os.cpu_count(),
                               "niceness": os.nice(0), "started": datetime.now(UTC).isoformat(timespec="seconds"),
                               "load_average_at_start": load_average()}
    try:
        database_url = pg_start(pg_dir, args.port or free_port(), "tollgate", "-c max_wal_size=8GB")
        os.environ.update({"DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "portal.settings",
                           "TOLLGATE_DATA_DIR": str(work / "var"), "LOG_LEVEL": "WARNING"})
        for name in ("REDIS_URL", "DJANGO_DEBUG", "STRIPE_SECRET_KEY", "TIGERBEETLE_ADDRESSES", "LEDGER_BACKEND"):
            os.environ.pop(name, None)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        results["postgresql"] = sql("SHOW server_version")
        customers, meters = seed(args.customers, start=SUBSCRIBED)
        say(f"seeded {args.customers} customers")
        grow(args, Loader(customers, meters), sizes, results)
        results["load_average_at_end"] = load_average()
        results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        print(json.dumps(results, indent=2), flush=True)
        write(results)
    finally:
        if "django.db" in sys.modules:
            from django.db import connections

            connections.close_all()
        pg_stop(pg_dir)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
