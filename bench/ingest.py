"""make bench-ingest / make bench-ledger: ingest throughput on a real HTTP server and PostgreSQL.

Starts a throwaway PostgreSQL (durable defaults: fsync and synchronous_commit on) and gunicorn
(portal.wsgi), then drives it from separate client processes over keep-alive HTTP on 127.0.0.1:
N events in batches of 100 and of 1,000 with 10% duplicates, then single-event POSTs at 1 and 16
concurrent clients. In the same run it measures a plain PostgreSQL COPY of the same rows into a bare
table, and prints the ratio. Every loop is bounded; everything is stopped at the end.

``--mode ledger`` (make bench-ledger) measures both ledger backends in one run: it also starts a
throwaway production-mode TigerBeetle replica (bench/_tb.py) and one gunicorn per backend, then
alternates plain batches, limited batches on the SQL ledger and limited batches on TigerBeetle,
round after round (medians), with each phase's CPU of the app, PostgreSQL and the replica; then
reserve+settle round trips on each backend and a micro-benchmark of the TigerBeetle client from this
process. Without a TigerBeetle binary it says so and measures the SQL rows only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import queue as queue_mod
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
from _tb import Replica, micro_bench, tb_binary

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


class BenchFailure(RuntimeError):
    """A phase that did not complete: a client error, a timeout, or non-200 answers."""


def client(port: int, key: str, bodies: list[bytes], path: str, queue: mp.Queue, timeout: float = 60) -> None:
    try:
        queue.put(_client(port, key, bodies, path, timeout))
    except BaseException as exc:  # reported, never a silent hang of the parent
        queue.put(([], {"client_error": f"{type(exc).__name__}: {exc}"}))


def _client(port: int, key: str, bodies: list[bytes], path: str, timeout: float) -> tuple[list[float], dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: dict[Any, Any] = {}
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
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        else:
            raise RuntimeError("no answer after 3 attempts")
        latencies.append(time.perf_counter() - start)
        statuses[response.status] = statuses.get(response.status, 0) + 1
        if response.status >= 300 and "first_error" not in statuses:
            statuses["first_error"] = f"HTTP {response.status}: {data[:300].decode(errors='replace')}"
        if path.endswith("batch") and response.status == 200:
            result = json.loads(data)
            statuses["accepted"] = statuses.get("accepted", 0) + result["accepted"]
            statuses["duplicates"] = statuses.get("duplicates", 0) + result["duplicates"]
            statuses["rejected"] = statuses.get("rejected", 0) + result["rejected"]
    return latencies, statuses


def drive(port: int, key: str, per_client: list[list[bytes]], path: str, *, deadline_s: float = 1800,
          request_timeout: float = 60) -> tuple[float, list[float], dict]:
    """Run the client processes; raise BenchFailure if one fails or all do not finish within ``deadline_s``."""
    queue: mp.Queue = mp.Queue()
    procs = [mp.Process(target=client, args=(port, key, bodies, path, queue, request_timeout)) for bodies in per_client]
    start = time.perf_counter()
    for p in procs:
        p.start()
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


def _tree_cpus(*roots: int) -> dict[int, float]:
    """CPU seconds (user + system) of each root process and its live descendants, plus what its exited
    children used (cutime/cstime), from one pass over /proc."""
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
    totals = {root: sum(times.get(root, (0, 0))) for root in roots}
    for pid in times:
        if pid in totals:
            continue
        ancestor = parents.get(pid)
        while ancestor and ancestor not in totals and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor in totals:
            totals[ancestor] += times[pid][0]
    return {root: total / ticks for root, total in totals.items()}


def _tree_cpu(root: int) -> float:
    return _tree_cpus(root)[root]


def start_server(env: dict[str, str], port: int, workers: int, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [PY, "-m", "gunicorn", "portal.wsgi", "-b", f"127.0.0.1:{port}", "-w", str(workers),
             "-k", "gthread", "--threads", "4", "--keep-alive", "30", "--log-level", "warning"],
            cwd=ROOT, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)


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


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n    ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# Ledger mode: one configuration per (what is sent, to which server). Plain batches (customers without a
# plan) never touch the ledger, so they run on the SQL server only.
CONFIGS = {  # label: (backend of the server, customer prefix)
    "plain": ("sql", "bench"),
    "limited_sql": ("sql", "limited"),
    "limited_tigerbeetle": ("tigerbeetle", "tblimited"),
}


def _reserve_settle(port: int, key: str, customer: str, numbers: range, timeout: float) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies = []
    try:
        for n in numbers:
            start = time.perf_counter()
            conn.request("POST", "/api/v1/reservations", headers=headers, body=json.dumps({
                "reservation_id": f"{customer}-r-{n}", "customer": customer, "meter": "llm_tokens", "quantity": "1000",
                "ttl_seconds": 60}))
            reserved = conn.getresponse()
            reserved_body = reserved.read()
            if reserved.status != 201:
                raise BenchFailure(f"reserve answered HTTP {reserved.status}: {reserved_body[:300].decode(errors='replace')}")
            settle = event(customer, 50_000_000 + n)
            settle["quantity"] = "800"
            conn.request("POST", f"/api/v1/reservations/{customer}-r-{n}/settle", headers=headers,
                         body=json.dumps({"events": [settle]}))
            settled = conn.getresponse()
            settled_body = settled.read()
            if settled.status != 200:
                raise BenchFailure(f"settle answered HTTP {settled.status}: {settled_body[:300].decode(errors='replace')}")
            latencies.append(time.perf_counter() - start)
    except (OSError, http.client.HTTPException) as exc:
        raise BenchFailure(f"reserve+settle: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()
    return latencies


def ledger_mode(args: argparse.Namespace, env: dict[str, str], key: str, work: Path, postmaster: int) -> None:
    """Plain batches, limited batches on the SQL ledger and limited batches on TigerBeetle, alternated
    round after round in one run; then reserve+settle on each backend and the TigerBeetle client alone.

    Each phase records events/s and the CPU per 1,000 events of the app (the gunicorn that served it),
    of PostgreSQL and of the TigerBeetle replica (/proc). On a machine shared with other work, events/s
    moves with the neighbours' load; CPU per event hardly does. Every figure reported is the median over
    rounds; ``overhead`` is 1 - limited/plain of those medians, and per round of the same round's pair."""
    results: dict[str, Any] = {"mode": "ledger", "events": args.events, "gunicorn_workers": args.workers,
                               "clients": args.clients, "cpus": os.cpu_count(), "rounds": args.rounds,
                               "sizes": args.sizes, "failures": {}}
    failures: dict[str, str] = results["failures"]
    servers: dict[str, subprocess.Popen] = {}
    ports: dict[str, int] = {}
    logs: dict[str, Path] = {}
    replica: Replica | None = None
    try:
        binary, where = tb_binary()
        results["tigerbeetle_binary"] = where
        if binary is None:
            print(f"TigerBeetle: NO SERVER BINARY ({where}): measuring the SQL rows only.", flush=True)
            failures["limited_tigerbeetle"] = f"not measured: no TigerBeetle binary ({where})"
        else:
            replica = Replica(binary, work / "tigerbeetle", free_port())
            try:
                replica.start()
                print(f"TigerBeetle: {where}, production-mode replica on {replica.address} (pid {replica.pid})",
                      flush=True)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                print(f"TigerBeetle: FAILED TO START ({exc}): measuring the SQL rows only.", flush=True)
                failures["limited_tigerbeetle"] = f"replica did not start: {exc}"
                replica.stop()
                replica = None
        backends = ["sql"] + (["tigerbeetle"] if replica is not None else [])
        for backend in backends:
            server_env = {**env, "LEDGER_BACKEND": backend}
            server_env.pop("TIGERBEETLE_ADDRESSES", None)
            if backend == "tigerbeetle":
                assert replica is not None
                server_env["TIGERBEETLE_ADDRESSES"] = replica.address
            ports[backend], logs[backend] = free_port(), work / f"gunicorn-{backend}.log"
            servers[backend] = start_server(server_env, ports[backend], args.workers, logs[backend])
        for backend in backends:
            problem = wait_healthy(ports[backend])
            if problem is None:
                continue
            if backend == "sql":
                raise SystemExit(f"the SQL server did not become healthy: {problem}\n    {_tail(logs[backend])}")
            print(f"TigerBeetle server FAILED its health check: {problem}\n    {_tail(logs[backend])}", flush=True)
            failures["limited_tigerbeetle"] = f"the app server on TigerBeetle is not healthy: {problem}"
            stop_server(servers.pop(backend))
        active = [label for label, (backend, _) in CONFIGS.items() if backend in servers]
        results["configurations"] = {label: {"backend": CONFIGS[label][0], "customers": CONFIGS[label][1]}
                                     for label in active}

        def phase(label: str, customer: str, total: int, size: int) -> dict[str, Any]:
            backend = CONFIGS[label][0]
            per_client = [batches(customer, total, size, w, args.clients) for w in range(args.clients)]
            roots = [servers[backend].pid, postmaster] + ([replica.pid] if replica is not None else [])
            before = _tree_cpus(*roots)
            elapsed, lat, totals = drive(ports[backend], key, per_client, "/api/v1/events/batch",
                                         deadline_s=args.phase_timeout, request_timeout=args.request_timeout)
            after = _tree_cpus(*roots)
            sent = sum(len(b) for b in per_client) * size
            bad = {k: v for k, v in totals.items() if isinstance(k, int) and k != 200}
            if bad:
                raise BenchFailure(f"non-200 answers {bad}: {totals.get('first_error')}")

            def per_1000(pid: int) -> float:
                return round((after[pid] - before[pid]) / sent * 1e6, 1)

            return {"events": sent, "seconds": round(elapsed, 2), "events_per_s": round(sent / elapsed),
                    "p50_ms": round(pct(lat, 0.5), 1), "p99_ms": round(pct(lat, 0.99), 1),
                    "accepted": totals.get("accepted"), "duplicates": totals.get("duplicates"),
                    "rejected": totals.get("rejected"),
                    "app_cpu_ms_per_1000": per_1000(servers[backend].pid),
                    "pg_cpu_ms_per_1000": per_1000(postmaster),
                    "tb_cpu_ms_per_1000": per_1000(replica.pid) if replica is not None else None}

        def fail(label: str, exc: BaseException) -> None:
            backend = CONFIGS[label][0]
            failures[label] = f"{type(exc).__name__}: {exc}"
            print(f"!! {label} FAILED: {failures[label]}\n    server log ({backend}):\n    {_tail(logs[backend])}",
                  flush=True)
            if label == "plain" or backend == "sql":
                raise SystemExit(f"{label} failed: the run has no baseline")
            active.remove(label)

        # warm-up: every server's workers import, connect and (TigerBeetle) open their clients first
        warm = min(args.events, 16 * 1000)
        for label, customer in (("plain", "bench-1000"), ("limited_sql", "limited-rt"),
                                ("limited_tigerbeetle", "tblimited-rt")):
            if label in active:
                try:
                    phase(label, customer, warm, 1000)
                except BenchFailure as exc:
                    fail(label, exc)
        if "plain" in active and "limited_tigerbeetle" in active:  # and the plain path on the TB server
            drive(ports["tigerbeetle"], key, [batches("bench-100", warm, 1000, w, args.clients)
                                              for w in range(args.clients)], "/api/v1/events/batch",
                  deadline_s=args.phase_timeout, request_timeout=args.request_timeout)

        for size in args.sizes:
            runs: dict[str, list[dict]] = {label: [] for label in CONFIGS}
            for round_ in range(args.rounds):
                # the order rotates every round: drift on this shared machine hits every configuration alike
                order = [c for c in CONFIGS if c in active]
                order = order[round_ % len(order):] + order[:round_ % len(order)]
                for label in order:
                    if label not in active:
                        continue
                    customer = f"{CONFIGS[label][1]}-{size}-r{round_}"
                    try:
                        run_ = phase(label, customer, args.events, size)
                    except BenchFailure as exc:
                        fail(label, exc)
                        continue
                    run_["round"] = round_ + 1
                    runs[label].append(run_)
                    print(f"{label} batch {size} round {round_ + 1}: {run_}", flush=True)
            _summarise(results, runs, size)

        # reserve + settle, the backends interleaved in chunks
        rs: dict[str, list[float]] = {b: [] for b in servers}
        rs_customer = {"sql": "limited-rt", "tigerbeetle": "tblimited-rt"}
        chunk = max(1, min(100, args.round_trips // 10))
        for i, first in enumerate(range(0, args.round_trips, chunk)):
            order = list(rs) if i % 2 == 0 else list(reversed(rs))
            for backend in order:
                if backend == "tigerbeetle" and "reserve_settle_tigerbeetle" in failures:
                    continue
                try:
                    rs[backend] += _reserve_settle(ports[backend], key, rs_customer[backend],
                                                   range(first, min(first + chunk, args.round_trips)),
                                                   args.request_timeout)
                except BenchFailure as exc:
                    failures[f"reserve_settle_{backend}"] = str(exc)
                    print(f"!! reserve+settle on {backend} FAILED: {exc}\n    {_tail(logs[backend])}", flush=True)
                    if backend == "sql":
                        raise SystemExit("reserve+settle failed on the SQL ledger") from exc
        for backend, latencies in rs.items():
            if latencies:
                results[f"reserve_settle_{backend}"] = {"round_trips": len(latencies),
                                                        "p50_ms": round(pct(latencies, 0.5), 2),
                                                        "p99_ms": round(pct(latencies, 0.99), 2)}

        if replica is not None:  # the ledger alone: the TigerBeetle client from this process, same replica
            pid = replica.pid
            try:
                results["tigerbeetle_client"] = micro_bench(replica.address, lambda: _tree_cpu(pid),
                                                            calls=args.micro_calls, lookups=args.micro_lookups)
            except (RuntimeError, TimeoutError, OSError) as exc:
                failures["tigerbeetle_client"] = f"{type(exc).__name__}: {exc}"
                print(f"!! TigerBeetle client micro-benchmark FAILED: {exc}", flush=True)
        for backend, log in logs.items():
            if "Traceback" in log.read_text(errors="replace"):
                results.setdefault("server_tracebacks", []).append(backend)
    finally:
        for server in servers.values():
            stop_server(server)
        if replica is not None:
            replica.stop()
    print(json.dumps(results, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"ledger-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json").write_text(json.dumps(results, indent=2))
    print(_report(results))


def _summarise(results: dict, runs: dict[str, list[dict]], size: int) -> None:
    keys = ("events_per_s", "p50_ms", "p99_ms", "app_cpu_ms_per_1000", "pg_cpu_ms_per_1000", "tb_cpu_ms_per_1000")
    for label, done in runs.items():
        if not done:
            continue
        medians = {k: statistics.median(r[k] for r in done) for k in keys if done[0][k] is not None}
        results[f"{label}_{size}"] = {**{k: round(v, 1) for k, v in medians.items()},
                                      "events_per_s": round(medians["events_per_s"]), "rounds": done}
    plain = results.get(f"plain_{size}")
    for label in ("limited_sql", "limited_tigerbeetle"):
        limited = results.get(f"{label}_{size}")
        if plain is None or limited is None:
            continue
        limited["overhead"] = round(1 - limited["events_per_s"] / plain["events_per_s"], 3)
        plain_by_round = {r["round"]: r["events_per_s"] for r in plain["rounds"]}
        limited["overhead_per_round"] = [round(1 - r["events_per_s"] / plain_by_round[r["round"]], 3)
                                         for r in limited["rounds"] if r["round"] in plain_by_round]
        limited["app_cpu_added_ms_per_1000"] = round(limited["app_cpu_ms_per_1000"] - plain["app_cpu_ms_per_1000"], 1)


def _report(results: dict) -> str:
    """The figures the docs quote, as a table."""
    lines = [f"\nbench-ledger: {results['events']:,} events per phase, medians of {results['rounds']} rounds, "
             f"{results['cpus']} CPUs, {results['gunicorn_workers']} gunicorn workers x 4 threads per backend, "
             f"{results['clients']} clients"]
    for size in results["sizes"]:
        lines.append(f"\nbatches of {size:,}:")
        lines.append(f"  {'configuration':<22}{'events/s':>10}{'overhead':>10}{'p50 ms':>9}{'p99 ms':>9}"
                     f"{'app CPU':>9}{'PG CPU':>8}{'TB CPU':>8}  (CPU: ms per 1,000 events)")
        for label in CONFIGS:
            row = results.get(f"{label}_{size}")
            if row is None:
                lines.append(f"  {label:<22}{'—':>10}  {results['failures'].get(label, 'not measured')}")
                continue
            overhead = f"{row['overhead']:.1%}" if "overhead" in row else ""
            tb_cpu = row.get("tb_cpu_ms_per_1000")
            lines.append(f"  {label:<22}{row['events_per_s']:>10,}{overhead:>10}{row['p50_ms']:>9}{row['p99_ms']:>9}"
                         f"{row['app_cpu_ms_per_1000']:>9}{row['pg_cpu_ms_per_1000']:>8}"
                         f"{'' if tb_cpu is None else tb_cpu:>8}")
            if "overhead_per_round" in row:
                rounds = ", ".join(f"{o:.1%}" for o in row["overhead_per_round"])
                lines.append(f"  {'':<22}overhead per round: {rounds}; app CPU added: "
                             f"{row['app_cpu_added_ms_per_1000']} ms per 1,000 events")
    for backend in ("sql", "tigerbeetle"):
        rs = results.get(f"reserve_settle_{backend}")
        if rs:
            lines.append(f"reserve+settle on {backend}: p50 {rs['p50_ms']} ms, p99 {rs['p99_ms']} ms "
                         f"({rs['round_trips']} round trips)")
    client = results.get("tigerbeetle_client")
    if client:
        ct, lk = client["create_transfers"], client["lookup_accounts"]
        lines.append(f"TigerBeetle client from the bench process: create_transfers of {ct['transfers_per_call']:,} "
                     f"linked transfers p50 {ct['wall_p50_ms']} ms, p99 {ct['wall_p99_ms']} ms "
                     f"(client CPU {ct['client_cpu_p50_ms']} ms, replica CPU {ct['replica_cpu_mean_ms']} ms, "
                     f"building the objects {ct['build_p50_ms']} ms more; {ct['transfers_per_s']:,} transfers/s); "
                     f"lookup_accounts p50 {lk['wall_p50_ms']} ms, p99 {lk['wall_p99_ms']} ms")
    for label, why in results["failures"].items():
        lines.append(f"FAILED or not measured: {label}: {why}")
    if results.get("server_tracebacks"):
        lines.append(f"tracebacks in the server logs of: {', '.join(results['server_tracebacks'])}")
    return "\n".join(lines)


def main() -> None:
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
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers and the replica on a kill too

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
        if args.mode == "ledger":
            postmaster = int((pg_dir / "data" / "postmaster.pid").read_text().split()[0])
            ledger_mode(args, env, key, work, postmaster)
            return
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
