"""make bench-gateway: what the LLM gateway adds to a call.

A fake OpenAI-compatible upstream (its own process, answering at once) and the portal under gunicorn on a
throwaway PostgreSQL (the SQL ledger): ``--server asgi`` (portal.asgi on gunicorn's asgi worker: the
gateway's async views), ``wsgi`` (portal.wsgi, 4 threads per worker: the sync views) or ``both``, one after
the other in the same run. The same client (16 threads, one pooled httpx client each, whole
non-streamed chat completions) calls the upstream directly, then through the gateway, alternating rounds;
the gateway's added latency is the difference of the medians (p50 and p99) of the same run. Each gateway
call reserves its worst case, relays the call and settles the usage as two events (docs/gateway.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _http import PY, ROOT, pct, start_server, stop_server, wait_healthy, write_results
from _pg import free_port, pg_start, pg_stop, run

UPSTREAM = r'''
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
ANSWER = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}).encode()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall between them
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER))); self.end_headers(); self.wfile.write(ANSWER)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''

SETUP = """
from datetime import datetime, timezone
from billing.catalog.services import catalog_import, meter_create, subscription_set
from billing.catalog.models import Plan
from billing.customers.services import api_key_create, customer_create
meter_create(key='llm_tokens', name='LLM tokens', aggregation='sum')
catalog_import(text='''plans:
  - key: gw
    name: Gateway
    currency: USD
    effective_from: "2020-01-01T00:00:00Z"
    charges: [{meter: llm_tokens, model: per_unit, unit_price: "0.000002"}]
    limits: [{meter: llm_tokens, hard: 1000000000000}]
    spend_cap: "1000000"
''', actor='bench')
c = customer_create(external_id='gw-bench', name='gw')
subscription_set(customer=c, plan=Plan.objects.get(key='gw'), start=datetime(2020, 1, 1, tzinfo=timezone.utc),
                 now=datetime.now(timezone.utc), actor='bench')
print(api_key_create(name='bench', scope='gateway', customer=c)[1])
"""

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 16}


def phase(url: str, key: str, clients: int, calls: int) -> list[float]:
    """``clients`` threads, ``calls`` whole chat completions each; every call's latency (seconds)."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def work() -> None:
        mine = []
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
            for _ in range(calls):
                start = time.perf_counter()
                response = client.post(url, json=BODY)
                mine.append(time.perf_counter() - start)
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} failed calls, first: {errors[0]}")
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--calls", type=int, default=100, help="calls per client per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--server", choices=["asgi", "wsgi", "both"], default="both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-gw-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # the postgres user makes its data directory in it
        upstream_port, app_port = free_port(), free_port()
        fake = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(upstream_port)])
        server = None
        try:
            database_url = pg_start(work / "pg", free_port(), "tollgate")
            env = {**os.environ, "DATABASE_URL": database_url, "TOLLGATE_DATA_DIR": str(work / "var"),
                   "TOLLGATE_RATE_LIMIT_PER_SECOND": "0", "LOG_LEVEL": "WARNING",
                   "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}/v1"}
            for name in ("REDIS_URL", "DJANGO_DEBUG", "TIGERBEETLE_ADDRESSES", "LEDGER_BACKEND"):
                env.pop(name, None)
            run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env)
            key = subprocess.run([PY, "manage.py", "shell", "-c", SETUP], cwd=ROOT, env=env, check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            direct = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
            gateway = f"http://127.0.0.1:{app_port}/gateway/v1/chat/completions"
            measured: dict[str, list[dict[str, Any]]] = {}
            for kind in (["wsgi", "asgi"] if args.server == "both" else [args.server]):
                server = start_server(env, app_port, args.workers, work / f"gunicorn-{kind}.log", asgi=kind == "asgi")
                problem = wait_healthy(app_port)
                if problem:
                    raise SystemExit(f"the portal did not start: {problem}")
                measured[kind] = measure(direct, gateway, key, args)
                stop_server(server)
                server = None
        finally:
            if server is not None:
                stop_server(server)
            fake.terminate()
            pg_stop(work / "pg")
    results: dict[str, Any] = {"clients": args.clients, "calls_per_round": args.clients * args.calls,
                               "cpus": os.cpu_count(), "gunicorn_workers": args.workers}
    for kind, rounds in measured.items():
        results[kind] = summary(rounds)
    write_results("gateway", results)
    print(f"\nbench-gateway: {args.clients} clients, {args.calls} calls each per round, medians of {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs, {args.workers} gunicorn workers")
    for kind in measured:
        r = results[kind]
        print(f"  {kind}: direct to the upstream p50 {r['direct_p50_ms']} / p99 {r['direct_p99_ms']} ms; "
              f"through the gateway p50 {r['gateway_p50_ms']} / p99 {r['gateway_p99_ms']} ms; "
              f"added p50 {r['added_p50_ms']} / p99 {r['added_p99_ms']} ms")


def measure(direct: str, gateway: str, key: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Warm up, then alternating rounds of the same client calling the upstream directly and through the gateway."""
    phase(gateway, key, args.clients, 10)  # warm up: imports, connections, accounts
    phase(direct, key, args.clients, 10)
    rounds: list[dict[str, Any]] = []
    for n in range(args.rounds):
        order = [("direct", direct), ("gateway", gateway)]
        if n % 2:
            order.reverse()
        row: dict[str, Any] = {"round": n + 1}
        for label, url in order:
            lat = phase(url, key, args.clients, args.calls)
            row[label] = {"p50_ms": round(pct(lat, 0.5), 2), "p99_ms": round(pct(lat, 0.99), 2), "calls": len(lat)}
        rounds.append(row)
        print(json.dumps(row), flush=True)
    return rounds


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds, and what the gateway adds (the difference of the medians)."""
    out: dict[str, Any] = {"rounds": rounds}
    for label in ("direct", "gateway"):
        for q in ("p50_ms", "p99_ms"):
            out[f"{label}_{q}"] = round(statistics.median(r[label][q] for r in rounds), 2)
    out["added_p50_ms"] = round(out["gateway_p50_ms"] - out["direct_p50_ms"], 2)
    out["added_p99_ms"] = round(out["gateway_p99_ms"] - out["direct_p99_ms"], 2)
    return out


if __name__ == "__main__":
    main()
