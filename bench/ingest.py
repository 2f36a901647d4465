"""make bench-ingest: end-to-end ingest throughput on a real HTTP server and PostgreSQL.

Starts a throwaway PostgreSQL (durable defaults: fsync and synchronous_commit on) and gunicorn
(portal.wsgi), then drives it from separate client processes over keep-alive HTTP on 127.0.0.1:
N events in batches of 100 and of 1,000 with 10% duplicates, then single-event POSTs at 1 and 16
concurrent clients. In the same run it measures a plain PostgreSQL COPY of the same rows into a bare
table, and prints the ratio. Every loop is bounded; everything is stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from _pg import free_port, pg_start, pg_stop, run

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
T0 = datetime.now(timezone.utc) - timedelta(hours=1)


def event(customer: str, n: int) -> dict:
    return {"event_id": f"e-{n}", "customer": customer, "meter": "llm_tokens", "quantity": str(100 + n % 900),
            "timestamp": (T0 + timedelta(microseconds=n)).isoformat(),
            "dimensions": {"model": ("gpt-4o", "claude", "llama")[n % 3], "direction": ("input", "output")[n % 2]}}


def batches(customer: str, total: int, size: int, worker: int, workers: int) -> list[bytes]:
    """This worker's share of the batches: per batch, 90% new events and 10% re-sent earlier ones."""
    out = []
    dup = size // 10
    fresh = size - dup
    n_batches = total // size
    for b in range(worker, n_batches, workers):
        base = b * fresh
        events = [event(customer, base + i) for i in range(fresh)]
        if base:
            events += [event(customer, (base * 7 + i * 13) % base) for i in range(dup)]  # identical re-sends
        else:
            events += events[:dup]
        out.append(json.dumps({"events": events}).encode())
    return out


def client(port: int, key: str, bodies: list[bytes], path: str, queue: mp.Queue) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: dict[Any, int] = {}
    for body in bodies:
        start = time.perf_counter()
        for _attempt in range(3):
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        else:
            raise RuntimeError("no answer after 3 attempts")
        latencies.append(time.perf_counter() - start)
        statuses[response.status] = statuses.get(response.status, 0) + 1
        if path.endswith("batch") and response.status == 200:
            result = json.loads(data)
            statuses["accepted"] = statuses.get("accepted", 0) + result["accepted"]
            statuses["duplicates"] = statuses.get("duplicates", 0) + result["duplicates"]
            statuses["rejected"] = statuses.get("rejected", 0) + result["rejected"]
    queue.put((latencies, statuses))


def drive(port: int, key: str, per_client: list[list[bytes]], path: str) -> tuple[float, list[float], dict]:
    queue: mp.Queue = mp.Queue()
    procs = [mp.Process(target=client, args=(port, key, bodies, path, queue)) for bodies in per_client]
    start = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get(timeout=1800) for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join(timeout=30)
    latencies = [lat for lats, _ in results for lat in lats]
    totals: dict = {}
    for _, statuses in results:
        for k, v in statuses.items():
            totals[k] = totals.get(k, 0) + v
    return elapsed, latencies, totals


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


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
"""


def _tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and its live descendants, plus what its exited children
    used (cutime/cstime), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    total = times.get(root, (0, 0))[0] + times.get(root, (0, 0))[1]
    for pid in times:
        ancestor = parents.get(pid)
        while ancestor and ancestor != root and ancestor in parents:
            ancestor = parents[ancestor]
        if pid != root and ancestor == root:
            total += times[pid][0]
    return total / ticks


def ledger_mode(args: argparse.Namespace, port: int, key: str, results: dict, server_pids: tuple[int, int]) -> None:
    """Plain batches next to quota- and spend-cap-checked ones, in one run; then reserve+settle.

    Besides events/s, each mode records the CPU that gunicorn and PostgreSQL spent per 1,000 events.
    On a machine shared with other work, events/s moves with the neighbours' load; CPU per event
    hardly does, so ``cpu_ratio`` (plain CPU per event / limited CPU per event) is the steadier estimate
    of what the check costs on a CPU-bound server."""
    for size in (1000, 100):
        runs: dict[str, list[dict]] = {"plain": [], "limited": []}
        for round_ in range(args.rounds):  # alternating, the order swapped every round: drift hits both alike
            order = ("plain", "limited") if round_ % 2 == 0 else ("limited", "plain")
            for label in order:
                customer = f"{'bench' if label == 'plain' else 'limited'}-{size}-r{round_}"
                per_client = [batches(customer, args.events, size, w, args.clients) for w in range(args.clients)]
                cpu_before = sum(_tree_cpu(pid) for pid in server_pids)
                elapsed, lat, totals = drive(port, key, per_client, "/api/v1/events/batch")
                cpu = sum(_tree_cpu(pid) for pid in server_pids) - cpu_before
                sent = sum(len(b) for b in per_client) * size
                run_ = {"events": sent, "seconds": round(elapsed, 2), "events_per_s": round(sent / elapsed),
                        "p50_ms": round(pct(lat, 0.5), 1), "p99_ms": round(pct(lat, 0.99), 1),
                        "accepted": totals.get("accepted"), "rejected": totals.get("rejected"),
                        "server_cpu_ms_per_1000": round(cpu / sent * 1e6, 1)}
                runs[label].append(run_)
                print(f"{label} batch {size} round {round_ + 1}: {run_}", flush=True)
        for label, done in runs.items():
            results[f"{label}_{size}"] = {
                **done[-1], "rounds": done,
                "events_per_s": round(statistics.median(r["events_per_s"] for r in done)),
                "server_cpu_ms_per_1000": round(statistics.median(r["server_cpu_ms_per_1000"] for r in done), 1)}
        results[f"limit_cost_{size}"] = round(
            1 - results[f"limited_{size}"]["events_per_s"] / results[f"plain_{size}"]["events_per_s"], 3)
        results[f"limit_cost_{size}_per_round"] = [
            round(1 - lim["events_per_s"] / pla["events_per_s"], 3)
            for pla, lim in zip(runs["plain"], runs["limited"], strict=True)]
        results[f"cpu_ratio_{size}"] = round(results[f"plain_{size}"]["server_cpu_ms_per_1000"]
                                             / results[f"limited_{size}"]["server_cpu_ms_per_1000"], 3)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies = []
    for n in range(args.round_trips):
        start = time.perf_counter()
        conn.request("POST", "/api/v1/reservations", headers=headers, body=json.dumps({
            "reservation_id": f"r-{n}", "customer": "limited-rt", "meter": "llm_tokens", "quantity": "1000",
            "ttl_seconds": 60}))
        reserved = conn.getresponse()
        reserved.read()
        settle = event("limited-rt", 50_000_000 + n)
        settle["quantity"] = "800"
        conn.request("POST", f"/api/v1/reservations/r-{n}/settle", headers=headers, body=json.dumps({"events": [settle]}))
        settled = conn.getresponse()
        settled.read()
        latencies.append(time.perf_counter() - start)
        if reserved.status != 201 or settled.status != 200:
            raise SystemExit(f"reservation round trip failed: {reserved.status} {settled.status}")
    results["reserve_settle"] = {"round_trips": args.round_trips, "p50_ms": round(pct(latencies, 0.5), 2),
                                 "p99_ms": round(pct(latencies, 0.99), 2)}
    print(json.dumps(results, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"ledger-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json").write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes for batches")
    parser.add_argument("--singles", type=int, default=5000, help="single-event POSTs at 1 client")
    parser.add_argument("--mode", choices=["ingest", "ledger"], default="ingest",
                        help="ledger: plain vs quota+spend-cap-checked batches, and reserve-then-settle round trips")
    parser.add_argument("--round-trips", type=int, default=1000, help="reserve+settle pairs (ledger mode)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="ledger mode: plain and limited phases per batch size, alternated; medians reported")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    os.chmod(work, 0o755)
    pg_dir = work / "pg"
    pg_port, http_port = free_port(), free_port()
    server = None
    try:
        # Ledger mode compares phases run one after the other on a growing event table: a vacuum of it
        # (several seconds of CPU once it holds millions of rows) lands in whichever phase it overlaps, and
        # decided single comparisons here. This throwaway server runs those phases without autovacuum.
        database_url = pg_start(pg_dir, pg_port, "tollgate", "-c autovacuum=off" if args.mode == "ledger" else "")
        env = {**os.environ, "DATABASE_URL": database_url,
               "TOLLGATE_DATA_DIR": str(work / "var"), "TOLLGATE_RATE_LIMIT_PER_SECOND": "0", "LOG_LEVEL": "WARNING"}
        env.pop("REDIS_URL", None)
        env.pop("DJANGO_DEBUG", None)
        run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env)
        setup = (
            "from billing.catalog.services import meter_create\n"
            "from billing.customers.services import customer_create, api_key_create\n"
            "meter_create(key='llm_tokens', name='LLM tokens', aggregation='sum')\n"
            f"runs = [f'{{s}}-r{{r}}' for s in (100, 1000) for r in range({args.rounds})]\n"
            "plain = ['bench-100', 'bench-1000', 'bench-single'] + [f'bench-{run}' for run in runs]\n"
            "limited = ['limited-rt'] + [f'limited-{run}' for run in runs]\n"
            "[customer_create(external_id=c, name=c) for c in plain + limited]\n"
            "from datetime import datetime, timezone\n"
            "from billing.catalog.models import Plan\n"
            "from billing.catalog.services import catalog_import, subscription_set\n"
            "from billing.customers.models import Customer\n"
            f"catalog_import(text={LIMITED_PLAN!r}, actor='bench')\n"
            "now = datetime.now(timezone.utc)\n"
            "[subscription_set(customer=Customer.objects.get(external_id=c), plan=Plan.objects.get(key='limited'),"
            " start=datetime(2020, 1, 1, tzinfo=timezone.utc), now=now, actor='bench')"
            " for c in limited]\n"
            "print(api_key_create(name='bench', scope='ingest')[1])\n"
        )
        key = subprocess.run([PY, "manage.py", "shell", "-c", setup], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        server = subprocess.Popen(
            [PY, "-m", "gunicorn", "portal.wsgi", "-b", f"127.0.0.1:{http_port}", "-w", str(args.workers),
             "-k", "gthread", "--threads", "4", "--keep-alive", "30", "--log-level", "warning"],
            cwd=ROOT, env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        results: dict = {"mode": args.mode, "events": args.events, "gunicorn_workers": args.workers,
                         "clients": args.clients, "cpus": os.cpu_count()}
        if args.mode == "ledger":
            postmaster = int((pg_dir / "data" / "postmaster.pid").read_text().split()[0])
            ledger_mode(args, http_port, key, results, (server.pid, postmaster))
            return

        for size in (100, 1000):
            customer = f"bench-{size}"
            per_client = [batches(customer, args.events, size, w, args.clients) for w in range(args.clients)]
            elapsed, lat, totals = drive(http_port, key, per_client, "/api/v1/events/batch")
            sent = sum(len(b) for b in per_client) * size
            results[f"batch_{size}"] = {"events": sent, "seconds": round(elapsed, 2), "events_per_s": round(sent / elapsed),
                                        "p50_ms": round(pct(lat, 0.5), 1), "p99_ms": round(pct(lat, 0.99), 1),
                                        "accepted": totals.get("accepted"), "duplicates": totals.get("duplicates"),
                                        "rejected": totals.get("rejected"), "http": {k: v for k, v in totals.items()
                                                                                     if isinstance(k, int)}}
            print(f"batch {size}: {results[f'batch_{size}']}", flush=True)

        singles = [json.dumps(event("bench-single", 10_000_000 + i)).encode() for i in range(args.singles * 3)]
        for clients, count in ((1, args.singles), (16, args.singles * 2)):
            start = args.singles if clients == 16 else 0
            chunk = singles[start:start + count]
            per_client = [chunk[i::clients] for i in range(clients)]
            elapsed, lat, totals = drive(http_port, key, per_client, "/api/v1/events")
            results[f"single_{clients}"] = {"requests": count, "seconds": round(elapsed, 2), "req_per_s": round(count / elapsed),
                                            "p50_ms": round(pct(lat, 0.5), 2), "p99_ms": round(pct(lat, 0.99), 2),
                                            "http": totals}
            print(f"single x{clients}: {results[f'single_{clients}']}", flush=True)

        # baseline: COPY of the same rows into a bare table, in the same run, same server
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
        results["stored_rows"] = stored
        expected = sum(r["accepted"] or 0 for k, r in results.items() if k.startswith("batch_")) + args.singles * 3
        results["stored_rows_expected"] = expected
        print(json.dumps(results, indent=2))
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / f"ingest-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json").write_text(json.dumps(results, indent=2))
        if stored != expected:
            raise SystemExit(f"stored {stored} rows, expected {expected}")
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        pg_stop(pg_dir)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
