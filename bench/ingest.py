"""make bench-ingest / make bench-ledger: ingest throughput on a real HTTP server and PostgreSQL.

Starts a throwaway PostgreSQL (durable defaults: fsync and synchronous_commit on) and gunicorn
(portal.wsgi), then drives it from separate client processes over keep-alive HTTP on 127.0.0.1:
N events in batches of 100 and of 1,000 with 10% duplicates, then single-event POSTs at 1 and 16
concurrent clients. In the same run it measures a plain PostgreSQL COPY of the same rows into a bare
table, and prints the ratio. Every loop is bounded; everything is stopped at the end.

``--mode ledger`` (make bench-ledger, bench/_ledger.py) measures both ledger backends in one run: it
also starts a throwaway production-mode TigerBeetle replica (bench/_tb.py) and one gunicorn per backend,
then alternates plain batches, limited batches on the SQL ledger and limited batches on TigerBeetle,
round after round (medians), with each phase's CPU of the app, PostgreSQL and the replica; then
reserve+settle round trips on each backend and a micro-benchmark of the TigerBeetle client from this
process. Without a TigerBeetle binary it says so and measures the SQL rows only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from _http import (
    BATCH_PATH,
    PY,
    ROOT,
    T0,
    drive,
    event,
    pct,
    per_client_batches,
    start_server,
    stop_server,
    wait_healthy,
    write_results,
)
from _ledger import ledger_mode
from _pg import free_port, pg_start, pg_stop, run

LIMITED_PLAN = """
plans:
  - key: limited
    name: Limited
    currency: USD
    effective_from: "2020-01-01T00:00:00Z"
    charges:
      - meter: llm_tokens
        model: graduated
        tiers: [{up_to: 1000000, unit_price: "0.000002"}, {up_to: null, unit_price: "0.000001"}]
    limits:
      - {meter: llm_tokens, soft: "80%", hard: 1000000000000000}
    spend_cap: "1000000000"
  - key: guarded
    name: Guarded
    currency: USD
    effective_from: "2020-01-01T00:00:00Z"
    charges:
      - meter: llm_tokens
        model: graduated
        tiers: [{up_to: 1000000, unit_price: "0.000002"}, {up_to: null, unit_price: "0.000001"}]
    limits:
      - {meter: llm_tokens, soft: "80%", hard: 1000000000000000}
    spend_cap: "1000000000"
    run_limits: {max_steps: 1000000000, max_spend: "1000000000", max_duration_seconds: 86400000}
    anomaly: {window_minutes: 5, factor: "1000", min_spend: "1000000000", action: alert}
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=None,
                        help="events per batch size (ingest: 1,000,000) or per phase (ledger: 200,000)")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes (per backend in ledger mode)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes for batches")
    parser.add_argument("--singles", type=int, default=5000, help="single-event POSTs at 1 client")
    parser.add_argument("--mode", choices=["ingest", "ledger"], default="ingest",
                        help="ledger: plain vs quota+spend-cap-checked batches on the SQL ledger and on TigerBeetle, "
                             "and reserve-then-settle round trips on each")
    parser.add_argument("--round-trips", type=int, default=1000, help="reserve+settle pairs per backend (ledger mode)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="ledger mode: phases per configuration and batch size, alternated; medians reported")
    parser.add_argument("--sizes", default="1000", help="ledger mode: batch sizes, comma-separated (e.g. 1000,100)")
    parser.add_argument("--micro-calls", type=int, default=30,
                        help="ledger mode: create_transfers calls of 3,000 transfers from the bench process")
    parser.add_argument("--micro-lookups", type=int, default=500, help="ledger mode: lookup_accounts round trips")
    parser.add_argument("--request-timeout", type=float, default=30, help="seconds per HTTP request (ledger mode)")
    parser.add_argument("--phase-timeout", type=float, default=None,
                        help="seconds for one phase's clients to finish (ledger mode; default 120 + events/500)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20,000 events, 2 rounds, 100 round trips, a short micro-benchmark")
    args = parser.parse_args()
    if args.quick:
        args.events = args.events or 20_000
        args.rounds, args.round_trips = min(args.rounds, 2), min(args.round_trips, 100)
        args.micro_calls, args.micro_lookups, args.singles = min(args.micro_calls, 5), min(args.micro_lookups, 100), 500
    if args.events is None:
        args.events = 200_000 if args.mode == "ledger" else 1_000_000
    args.sizes = [int(size) for size in str(args.sizes).split(",")]
    if args.phase_timeout is None:
        args.phase_timeout = 120 + args.events / 500
    return args


def prepare(args: argparse.Namespace, database_url: str, work: Path) -> tuple[dict[str, str], str]:
    """Migrate, then create the meter, the customers of every phase (plain ones without a plan, limited
    ones subscribed to LIMITED_PLAN) and an ingest API key, through the services. Returns the servers'
    environment and the key."""
    env = {**os.environ, "DATABASE_URL": database_url,
           "TOLLGATE_DATA_DIR": str(work / "var"), "TOLLGATE_RATE_LIMIT_PER_SECOND": "0", "LOG_LEVEL": "WARNING"}
    env.pop("REDIS_URL", None)
    env.pop("DJANGO_DEBUG", None)
    env.pop("TIGERBEETLE_ADDRESSES", None)  # set per server in ledger mode; migrate and setup on the SQL ledger
    env.pop("LEDGER_BACKEND", None)
    run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env)
    setup = (
        "from billing.catalog.services import meter_create\n"
        "from billing.customers.services import customer_create, api_key_create\n"
        "meter_create(key='llm_tokens', name='LLM tokens', aggregation='sum')\n"
        f"runs = [f'{{s}}-r{{r}}' for s in {sorted({100, 1000, *args.sizes})!r} for r in range({args.rounds})]\n"
        "plain = ['bench-100', 'bench-1000', 'bench-single'] + [f'bench-{run}' for run in runs]\n"
        "limited = ['limited-rt', 'tblimited-rt'] + [f'{p}-{run}' for p in ('limited', 'tblimited') for run in runs]\n"
        "guarded = ['guarded-single', 'tbguarded-single'] + [f'{p}-{run}' for p in ('guarded', 'tbguarded') for run in runs]\n"
        "[customer_create(external_id=c, name=c) for c in plain + limited + guarded]\n"
        "from datetime import datetime, timezone\n"
        "from billing.catalog.models import Plan\n"
        "from billing.catalog.services import catalog_import, subscription_set\n"
        "from billing.customers.models import Customer\n"
        f"catalog_import(text={LIMITED_PLAN!r}, actor='bench')\n"
        "now = datetime.now(timezone.utc)\n"
        "[subscription_set(customer=Customer.objects.get(external_id=c), plan=Plan.objects.get(key='limited'),"
        " start=datetime(2020, 1, 1, tzinfo=timezone.utc), now=now, actor='bench')"
        " for c in limited]\n"
        "[subscription_set(customer=Customer.objects.get(external_id=c), plan=Plan.objects.get(key='guarded'),"
        " start=datetime(2020, 1, 1, tzinfo=timezone.utc), now=now, actor='bench')"
        " for c in guarded]\n"
        "from billing.guardrails.budgets import budget_create\n"
        "[budget_create(customer=Customer.objects.get(external_id=c), budget_id='all', scope={}, amount='1000000000',"
        " period='month', action='block') for c in guarded]\n"
        "print(api_key_create(name='bench', scope='ingest')[1])\n"
    )
    key = subprocess.run([PY, "manage.py", "shell", "-c", setup], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return env, key


def batch_phases(args: argparse.Namespace, port: int, key: str, results: dict[str, Any]) -> None:
    """``--events`` events in batches of 100, then of 1,000, from ``--clients`` processes."""
    for size in (100, 1000):
        customer = f"bench-{size}"
        per_client = per_client_batches(customer, args.events, size, args.clients)
        elapsed, lat, totals = drive(port, key, per_client, BATCH_PATH)
        sent = sum(len(b) for b in per_client) * size
        results[f"batch_{size}"] = {"events": sent, "seconds": round(elapsed, 2), "events_per_s": round(sent / elapsed),
                                    "p50_ms": round(pct(lat, 0.5), 1), "p99_ms": round(pct(lat, 0.99), 1),
                                    "accepted": totals.get("accepted"), "duplicates": totals.get("duplicates"),
                                    "rejected": totals.get("rejected"), "http": {k: v for k, v in totals.items()
                                                                                 if isinstance(k, int)}}
        print(f"batch {size}: {results[f'batch_{size}']}", flush=True)


def single_phases(args: argparse.Namespace, port: int, key: str, results: dict[str, Any]) -> None:
    """``--singles`` single-event POSTs from 1 client, then twice as many from 16."""
    singles = [json.dumps(event("bench-single", 10_000_000 + i)).encode() for i in range(args.singles * 3)]
    for clients, count in ((1, args.singles), (16, args.singles * 2)):
        start = args.singles if clients == 16 else 0
        chunk = singles[start:start + count]
        per_client = [chunk[i::clients] for i in range(clients)]
        elapsed, lat, totals = drive(port, key, per_client, "/api/v1/events")
        results[f"single_{clients}"] = {"requests": count, "seconds": round(elapsed, 2), "req_per_s": round(count / elapsed),
                                        "p50_ms": round(pct(lat, 0.5), 2), "p99_ms": round(pct(lat, 0.99), 2),
                                        "http": totals}
        print(f"single x{clients}: {results[f'single_{clients}']}", flush=True)


def copy_baseline(args: argparse.Namespace, database_url: str, results: dict[str, Any]) -> int:
    """The baseline, same run, same server: a COPY of the same rows into a bare table (no index, no
    idempotency, no validation, no HTTP). Returns the rows the event table holds."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as db:
        db.execute("CREATE TABLE bare_events (customer_id bigint, event_id text, quantity numeric, "
                   "ts timestamptz, dimensions jsonb)")
        rows = [(1, f"e-{n}", str(100 + n % 900), (T0 + timedelta(microseconds=n)).isoformat(),
                 json.dumps(event("x", n)["dimensions"])) for n in range(args.events)]
        start = time.perf_counter()
        with db.cursor() as cur, cur.copy("COPY bare_events FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        copy_s = time.perf_counter() - start
        stored = db.execute("SELECT count(*) FROM usage_event").fetchone()[0]  # type: ignore[index]
    results["copy"] = {"rows": args.events, "seconds": round(copy_s, 2), "rows_per_s": round(args.events / copy_s)}
    for size in (100, 1000):
        ours = results[f"batch_{size}"]["events_per_s"]
        results[f"batch_{size}"]["ratio_to_copy"] = round(ours / results["copy"]["rows_per_s"], 3)
    return int(stored)


def ingest_mode(args: argparse.Namespace, env: dict[str, str], key: str, database_url: str) -> None:
    """Batches, single events and the COPY baseline; then every accepted event must be stored exactly once."""
    port = free_port()
    server = start_server(env, port, args.workers, None)
    try:
        problem = wait_healthy(port)
        if problem is not None:
            raise SystemExit(f"the server did not become healthy: {problem}")
        results: dict = {"mode": args.mode, "events": args.events, "gunicorn_workers": args.workers,
                         "clients": args.clients, "cpus": os.cpu_count()}
        batch_phases(args, port, key, results)
        single_phases(args, port, key, results)
        stored = copy_baseline(args, database_url, results)
    finally:
        stop_server(server)
    results["stored_rows"] = stored
    expected = sum(r["accepted"] or 0 for k, r in results.items() if k.startswith("batch_")) + args.singles * 3
    results["stored_rows_expected"] = expected
    print(json.dumps(results, indent=2))
    write_results("ingest", results)
    if stored != expected:
        raise SystemExit(f"stored {stored} rows, expected {expected}")


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers and the replica on a kill too
    work = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    os.chmod(work, 0o755)
    pg_dir = work / "pg"
    try:
        # Ledger mode compares phases run one after the other on a growing event table: a vacuum of it
        # (several seconds of CPU once it holds millions of rows) lands in whichever phase it overlaps, and
        # decided single comparisons here. This throwaway server runs those phases without autovacuum.
        database_url = pg_start(pg_dir, free_port(), "tollgate", "-c autovacuum=off" if args.mode == "ledger" else "")
        env, key = prepare(args, database_url, work)
        if args.mode == "ledger":
            postmaster = int((pg_dir / "data" / "postmaster.pid").read_text().split()[0])
            ledger_mode(args, env, key, work, postmaster)
        else:
            ingest_mode(args, env, key, database_url)
    finally:
        pg_stop(pg_dir)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
