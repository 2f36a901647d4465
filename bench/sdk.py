"""make bench-sdk: what the Python SDK costs the caller, and how fast its emitter delivers.

The portal under gunicorn on a throwaway PostgreSQL. In this process:
- ``track()`` on the caller's thread: the median over chunks of 1,000 calls of the time per call (the
  queue large enough never to block, so nothing but ``track()`` itself is timed);
- the emitter: ``--events`` events tracked as fast as possible, then ``flush()``; events/s from the first
  ``track()`` to the flush, with batches of 1,000; against the same batches posted by one plain client
  in the same run (the baseline: what one connection can push).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python"))
from _http import PY, ROOT, start_server, stop_server, wait_healthy, write_results
from _pg import free_port, pg_start, pg_stop, run
from tollgate_client import Tollgate
from tollgate_client._core import clock_text

SETUP = """
from billing.catalog.services import meter_create
from billing.customers.services import api_key_create, customer_create
meter_create(key='llm_tokens', name='LLM tokens', aggregation='sum')
for c in ('sdk-calls', 'sdk-emitter', 'sdk-baseline'):
    customer_create(external_id=c, name=c)
print(api_key_create(name='bench', scope='ingest')[1])
"""


def track_cost(url: str, key: str, calls: int) -> dict[str, float]:
    """Per-call cost of track() on the caller's thread (µs): median and p99 over chunks of 1,000 calls."""
    per_call: list[float] = []
    with Tollgate(base_url=url, api_key=key, max_queue=calls + 10, batch_size=1000, flush_interval=0.2) as tg:
        for start in range(0, calls, 1000):
            begin = time.perf_counter()
            for n in range(start, start + 1000):
                tg.track(customer="sdk-calls", meter="llm_tokens", quantity=100 + n % 900,
                         dimensions={"model": "gpt-4o"}, trace={"run_id": f"r{n // 50}"})
            per_call.append((time.perf_counter() - begin) / 1000 * 1e6)
        tg.flush(timeout=300)
    ordered = sorted(per_call)
    return {"median_us": round(statistics.median(per_call), 2), "p99_us": round(ordered[int(0.99 * len(ordered))], 2)}


def emitter_rate(url: str, key: str, events: int) -> dict[str, float]:
    with Tollgate(base_url=url, api_key=key, max_queue=events + 10, batch_size=1000, flush_interval=0.05) as tg:
        begin = time.perf_counter()
        for n in range(events):
            tg.track(customer="sdk-emitter", meter="llm_tokens", quantity=100 + n % 900,
                     dimensions={"model": "gpt-4o"})
        if not tg.flush(timeout=600):
            raise SystemExit("the emitter did not drain in 10 minutes")
        elapsed = time.perf_counter() - begin
    return {"events": events, "seconds": round(elapsed, 2), "events_per_s": round(events / elapsed)}


def baseline_rate(url: str, key: str, events: int) -> dict[str, float]:
    """The same batches of 1,000 posted back to back on one connection (no SDK): the same fields as the
    emitter's events, a timestamp included (an event without one is rejected, and rejecting is cheaper)."""
    start = time.time()
    bodies = [json.dumps({"events": [{"event_id": f"b-{b}-{i}", "customer": "sdk-baseline", "meter": "llm_tokens",
                                      "timestamp": clock_text(start + (b * 1000 + i) * 1e-6),
                                      "quantity": str(100 + i % 900), "dimensions": {"model": "gpt-4o"}}
                                     for i in range(1000)]}).encode() for b in range(events // 1000)]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                      timeout=60) as client:
        begin = time.perf_counter()
        for body in bodies:
            response = client.post("/api/v1/events/batch", content=body)
            if response.status_code not in (200, 207) or response.json()["accepted"] != 1000:
                raise SystemExit(f"baseline batch answered {response.status_code}: {response.text[:200]}")
        elapsed = time.perf_counter() - begin
    return {"events": len(bodies) * 1000, "seconds": round(elapsed, 2), "events_per_s": round(len(bodies) * 1000 / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--calls", type=int, default=100_000, help="track() calls timed on the caller's thread")
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-sdk-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        server = None
        try:
            database_url = pg_start(work / "pg", free_port(), "tollgate")
            env = {**os.environ, "DATABASE_URL": database_url, "TOLLGATE_DATA_DIR": str(work / "var"),
                   "TOLLGATE_RATE_LIMIT_PER_SECOND": "0", "LOG_LEVEL": "WARNING"}
            for name in ("REDIS_URL", "DJANGO_DEBUG", "TIGERBEETLE_ADDRESSES", "LEDGER_BACKEND"):
                env.pop(name, None)
            run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env)
            key = subprocess.run([PY, "manage.py", "shell", "-c", SETUP], cwd=ROOT, env=env, check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            port = free_port()
            server = start_server(env, port, args.workers, work / "gunicorn.log")
            problem = wait_healthy(port)
            if problem:
                raise SystemExit(f"the portal did not start: {problem}")
            url = f"http://127.0.0.1:{port}"
            results: dict[str, Any] = {"track": track_cost(url, key, args.calls),
                                       "baseline": baseline_rate(url, key, args.events),
                                       "emitter": emitter_rate(url, key, args.events), "cpus": os.cpu_count()}
            count = ("from billing.usage.models import UsageEvent\n"
                     "print(UsageEvent.objects.filter(customer__external_id='sdk-emitter').count())")
            stored = int(subprocess.run([PY, "manage.py", "shell", "-c", count], cwd=ROOT, env=env, check=True,
                                        capture_output=True, text=True).stdout.strip().splitlines()[-1])
            if stored != args.events:  # the rate counts only what was stored
                raise SystemExit(f"the emitter's {args.events:,} events: {stored:,} stored")
            results["emitter"]["stored"] = stored
        finally:
            if server is not None:
                stop_server(server)
            pg_stop(work / "pg")
    results["emitter_over_baseline"] = round(results["emitter"]["events_per_s"] / results["baseline"]["events_per_s"], 2)
    write_results("sdk", results)
    print(json.dumps(results, indent=2))
    print(f"\nbench-sdk: track() on the caller's thread: median {results['track']['median_us']} µs, "
          f"p99 {results['track']['p99_us']} µs per call\n"
          f"  emitter: {results['emitter']['events_per_s']:,} events/s ({args.events:,} events, batches of 1,000); "
          f"one plain client posting the same batches: {results['baseline']['events_per_s']:,} events/s "
          f"(ratio {results['emitter_over_baseline']})")


if __name__ == "__main__":
    main()
