"""What one gateway call costs the portal, in-process: statements and app CPU per call.

Not the latency bench (``make bench-gateway``): the sync gateway view called through Django's test client in
this process (no HTTP server), on a throwaway PostgreSQL (the SQL ledger), the fake upstream of
bench/gateway.py in its own process. 20 warm-up calls, then ``--calls`` timed ones: the statements the
server ran per call (``pg_stat_statements``: BEGIN/COMMIT, savepoints and the raw COPY and insert
included), the app's CPU per call (``time.process_time()``) and the in-process p50/p99. CPU time and
statement counts are what to compare between two trees on a shared machine; wall times are not.

    .venv/bin/python bench/gateway_calls.py --calls 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _http import ROOT, pct
from _pg import free_port, pg_start, pg_stop
from gateway import BODY, SETUP, UPSTREAM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-gwcalls-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # the postgres user makes its data directory in it
        upstream_port = free_port()
        fake = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(upstream_port)])
        try:
            url = pg_start(work / "pg", free_port(), "tollgate", "-c shared_preload_libraries=pg_stat_statements")
            for name in ("REDIS_URL", "DJANGO_DEBUG", "TIGERBEETLE_ADDRESSES", "LEDGER_BACKEND"):
                os.environ.pop(name, None)
            os.environ.update({"DATABASE_URL": url, "TOLLGATE_DATA_DIR": str(work / "var"), "LOG_LEVEL": "WARNING",
                               "TOLLGATE_RATE_LIMIT_PER_SECOND": "0", "DJANGO_SETTINGS_MODULE": "portal.settings",
                               "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}/v1"})
            print(json.dumps(measure(args.calls)))
        finally:
            fake.terminate()
            pg_stop(work / "pg")


def measure(calls: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    call_command("migrate", verbosity=0)
    key: list[str] = []
    exec(SETUP.replace("print(", "key.append("), {"key": key})  # noqa: S102 (the bench's own setup text)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key[0]}")
    body = json.dumps(BODY)

    def call() -> None:
        answer = client.post("/gateway/v1/chat/completions", body, content_type="application/json")
        if answer.status_code != 200:
            raise SystemExit(f"gateway answered {answer.status_code}: {answer.content[:300]!r}")

    with connection.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    for _ in range(20):
        call()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_statements_reset()")
    latencies: list[float] = []
    cpu = time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)
    cpu = (time.process_time() - cpu) * 1000 / calls
    with connection.cursor() as cursor:
        cursor.execute("SELECT sum(calls) FROM pg_stat_statements WHERE query NOT LIKE '%%pg_stat_statements%%'")
        statements = float(cursor.fetchone()[0]) / calls
    return {"calls": calls, "statements_per_call": round(statements, 1), "app_cpu_ms_per_call": round(cpu, 2),
            "p50_ms": round(pct(latencies, 0.5), 2), "p99_ms": round(pct(latencies, 0.99), 2),
            "load_average": os.getloadavg()[0]}


if __name__ == "__main__":
    main()
