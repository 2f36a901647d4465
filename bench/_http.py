"""The HTTP side of bench-ingest and bench-ledger: the events the clients send, the client processes that
send them over keep-alive connections, and the gunicorn serving ``portal.wsgi`` that answers.

Every loop is bounded: a request has a timeout, a phase a deadline, and a client that fails reports it
to the parent instead of leaving it waiting."""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
T0 = datetime.now(timezone.utc) - timedelta(hours=1)
BATCH_PATH = "/api/v1/events/batch"


class BenchFailure(RuntimeError):
    """A phase that did not complete: a client error, a timeout, or non-200 answers."""


def event(customer: str, n: int) -> dict:
    body: dict[str, Any] = {"event_id": f"e-{n}", "customer": customer, "meter": "llm_tokens", "quantity": str(100 + n % 900),
            "timestamp": (T0 + timedelta(microseconds=n)).isoformat(),
            "dimensions": {"model": ("gpt-4o", "claude", "llama")[n % 3], "direction": ("input", "output")[n % 2]}}
    if "guarded" in customer:  # the guardrails' customers: agent runs of 50 steps, for end users
        body["trace"] = {"run_id": f"run-{n // 50}"}
        body["dimensions"]["end_user"] = f"u-{n % 20}"
    return body


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


def per_client_batches(customer: str, total: int, size: int, clients: int) -> list[list[bytes]]:
    """Every client's share of ``total`` events in batches of ``size``."""
    return [batches(customer, total, size, w, clients) for w in range(clients)]


def client(port: int, key: str, bodies: list[bytes], path: str, queue: mp.Queue, timeout: float = 60) -> None:
    try:
        queue.put(_client(port, key, bodies, path, timeout))
    except BaseException as exc:  # reported, never a silent hang of the parent
        queue.put(([], {"client_error": f"{type(exc).__name__}: {exc}"}))


def _post(conn: http.client.HTTPConnection, port: int, timeout: float, path: str, body: bytes,
          headers: dict[str, str]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, bytes]:
    """One POST, on a fresh connection again after a dropped one; three attempts."""
    for _attempt in range(3):
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            return conn, response, response.read()
        except (ConnectionError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    raise RuntimeError("no answer after 3 attempts")


def _count(statuses: dict[Any, Any], path: str, response: http.client.HTTPResponse, data: bytes) -> None:
    statuses[response.status] = statuses.get(response.status, 0) + 1
    if response.status >= 300 and "first_error" not in statuses:
        statuses["first_error"] = f"HTTP {response.status}: {data[:300].decode(errors='replace')}"
    if path.endswith("batch") and response.status == 200:
        result = json.loads(data)
        for outcome in ("accepted", "duplicates", "rejected"):
            statuses[outcome] = statuses.get(outcome, 0) + result[outcome]


def _client(port: int, key: str, bodies: list[bytes], path: str, timeout: float) -> tuple[list[float], dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: dict[Any, Any] = {}
    for body in bodies:
        start = time.perf_counter()
        conn, response, data = _post(conn, port, timeout, path, body, headers)
        latencies.append(time.perf_counter() - start)
        _count(statuses, path, response, data)
    return latencies, statuses


def _collect(queue: mp.Queue, procs: list[mp.Process], start: float, deadline_s: float) -> list[tuple[list, dict]]:
    results = []
    try:
        for _ in procs:
            remaining = deadline_s - (time.perf_counter() - start)
            try:
                results.append(queue.get(timeout=max(0.1, remaining)))
            except queue_mod.Empty:
                raise BenchFailure(f"the clients did not finish within {deadline_s:.0f} s") from None
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return results


def drive(port: int, key: str, per_client: list[list[bytes]], path: str, *, deadline_s: float = 1800,
          request_timeout: float = 60) -> tuple[float, list[float], dict]:
    """Run the client processes; raise BenchFailure if one fails or all do not finish within ``deadline_s``."""
    queue: mp.Queue = mp.Queue()
    procs = [mp.Process(target=client, args=(port, key, bodies, path, queue, request_timeout)) for bodies in per_client]
    start = time.perf_counter()
    for p in procs:
        p.start()
    results = _collect(queue, procs, start, deadline_s)
    elapsed = time.perf_counter() - start
    latencies = [lat for lats, _ in results for lat in lats]
    totals: dict = {}
    for _, statuses in results:
        for k, v in statuses.items():
            if k in ("client_error", "first_error"):
                totals.setdefault(k, v)
            else:
                totals[k] = totals.get(k, 0) + v
    if "client_error" in totals:
        raise BenchFailure(f"a client failed: {totals['client_error']}; {totals.get('first_error', '')}")
    return elapsed, latencies, totals


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (seconds), in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def start_server(env: dict[str, str], port: int, workers: int, log: Path | None,
                 asgi: bool = False) -> subprocess.Popen:
    """gunicorn on 127.0.0.1:``port`` in its own session (stopped as a group); output to ``log``, or to this
    process's own output without one. ``asgi``: portal.asgi on gunicorn's asgi worker (docs/deploy.md)
    instead of portal.wsgi on 4 threads per worker."""
    kind = ["portal.asgi", "-k", "asgi"] if asgi else ["portal.wsgi", "-k", "gthread", "--threads", "4"]
    command = [PY, "-m", "gunicorn", *kind, "-b", f"127.0.0.1:{port}", "-w", str(workers),
               "--keep-alive", "30", "--log-level", "warning"]
    if log is None:
        return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_healthy(port: int, timeout: float = 60) -> str | None:
    """None once /healthz answers 200; else the last answer or error after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            body = response.read()
            if response.status == 200:
                return None
            last = f"HTTP {response.status}: {body[:300].decode(errors='replace')}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.3)
    return last


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n    ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def write_results(kind: str, results: dict) -> None:
    """The results as JSON in bench/results/<kind>-<UTC timestamp>.json (not committed)."""
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{kind}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json").write_text(json.dumps(results, indent=2))
