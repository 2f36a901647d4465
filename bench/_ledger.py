"""``bench/ingest.py --mode ledger`` (make bench-ledger): plain batches, limited batches on the SQL ledger and
limited batches on TigerBeetle, alternated round after round in one run; then reserve+settle on each
backend and the TigerBeetle client alone.

Each phase records events/s and the CPU per 1,000 events of the app (the gunicorn that served it), of
PostgreSQL and of the TigerBeetle replica (/proc). On a machine shared with other work, events/s moves
with the neighbours' load; CPU per event hardly does. Every figure reported is the median over rounds;
``overhead`` is 1 - limited/plain of those medians, and per round of the same round's pair.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from _http import (
    BATCH_PATH,
    BenchFailure,
    drive,
    event,
    pct,
    per_client_batches,
    start_server,
    stop_server,
    tail,
    wait_healthy,
    write_results,
)
from _pg import free_port
from _tb import Replica, micro_bench, tb_binary

# One configuration per (what is sent, to which server). Plain batches (customers without a plan) never
# touch the ledger, so they run on the SQL server only.
CONFIGS = {  # label: (backend of the server, customer prefix)
    "plain": ("sql", "bench"),
    "limited_sql": ("sql", "limited"),
    "limited_tigerbeetle": ("tigerbeetle", "tblimited"),
    # quotas, a spend cap, one budget, run limits and anomaly counters: every event in a run and a budget
    "guarded_sql": ("sql", "guarded"),
    "guarded_tigerbeetle": ("tigerbeetle", "tbguarded"),
}
LIMITED = ("limited_sql", "limited_tigerbeetle", "guarded_sql", "guarded_tigerbeetle")
RESERVE_SETTLE_CUSTOMER = {"sql": "limited-rt", "tigerbeetle": "tblimited-rt"}


def tree_cpus(*roots: int) -> dict[int, float]:
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


def _post_json(conn: http.client.HTTPConnection, path: str, headers: dict[str, str], body: dict, expect: int,
               what: str) -> None:
    conn.request("POST", path, headers=headers, body=json.dumps(body))
    response = conn.getresponse()
    data = response.read()
    if response.status != expect:
        raise BenchFailure(f"{what} answered HTTP {response.status}: {data[:300].decode(errors='replace')}")


def reserve_settle(port: int, key: str, customer: str, numbers: range, timeout: float) -> list[float]:
    """One reserve (1,000 tokens) then its settle (one 800-token event) per number; the pair's latencies."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies = []
    try:
        for n in numbers:
            start = time.perf_counter()
            _post_json(conn, "/api/v1/reservations", headers, {
                "reservation_id": f"{customer}-r-{n}", "customer": customer, "meter": "llm_tokens", "quantity": "1000",
                "ttl_seconds": 60}, 201, "reserve")
            settle = event(customer, 50_000_000 + n)
            settle["quantity"] = "800"
            _post_json(conn, f"/api/v1/reservations/{customer}-r-{n}/settle", headers, {"events": [settle]}, 200,
                       "settle")
            latencies.append(time.perf_counter() - start)
    except (OSError, http.client.HTTPException) as exc:
        raise BenchFailure(f"reserve+settle: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()
    return latencies


class LedgerRun:
    """One bench-ledger run: its replica, its servers (one gunicorn per backend), and its results."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], key: str, work: Path, postmaster: int) -> None:
        self.args, self.env, self.key, self.work, self.postmaster = args, env, key, work, postmaster
        self.results: dict[str, Any] = {"mode": "ledger", "events": args.events, "gunicorn_workers": args.workers,
                                        "clients": args.clients, "cpus": os.cpu_count(), "rounds": args.rounds,
                                        "sizes": args.sizes, "failures": {}}
        self.failures: dict[str, str] = self.results["failures"]
        self.servers: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.logs: dict[str, Path] = {}
        self.replica: Replica | None = None
        self.active: list[str] = []

    def measure(self) -> None:
        self.start_replica()
        self.start_servers()
        self.warm_up()
        for size in self.args.sizes:
            self.rounds(size)
        self.reserve_settle()
        self.guarded_singles()
        self.client_alone()
        for backend, log in self.logs.items():
            if "Traceback" in log.read_text(errors="replace"):
                self.results.setdefault("server_tracebacks", []).append(backend)

    def stop(self) -> None:
        for server in self.servers.values():
            stop_server(server)
        if self.replica is not None:
            self.replica.stop()

    def start_replica(self) -> None:
        """A production-mode TigerBeetle replica, or the reason there is none (the SQL rows are measured)."""
        binary, where = tb_binary()
        self.results["tigerbeetle_binary"] = where
        if binary is None:
            print(f"TigerBeetle: NO SERVER BINARY ({where}): measuring the SQL rows only.", flush=True)
            self.failures["limited_tigerbeetle"] = f"not measured: no TigerBeetle binary ({where})"
            return
        replica = self.replica = Replica(binary, self.work / "tigerbeetle", free_port())  # stopped by stop()
        try:
            replica.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"TigerBeetle: FAILED TO START ({exc}): measuring the SQL rows only.", flush=True)
            self.failures["limited_tigerbeetle"] = f"replica did not start: {exc}"
            replica.stop()
            self.replica = None
            return
        print(f"TigerBeetle: {where}, production-mode replica on {replica.address} (pid {replica.pid})", flush=True)

    def start_servers(self) -> None:
        """One gunicorn per backend; the SQL one must answer its health check, the TigerBeetle one is dropped
        (and reported) if it does not."""
        backends = ["sql"] + (["tigerbeetle"] if self.replica is not None else [])
        for backend in backends:
            server_env = {**self.env, "LEDGER_BACKEND": backend}
            server_env.pop("TIGERBEETLE_ADDRESSES", None)
            if backend == "tigerbeetle":
                assert self.replica is not None
                server_env["TIGERBEETLE_ADDRESSES"] = self.replica.address
            self.ports[backend], self.logs[backend] = free_port(), self.work / f"gunicorn-{backend}.log"
            self.servers[backend] = start_server(server_env, self.ports[backend], self.args.workers, self.logs[backend])
        for backend in backends:
            problem = wait_healthy(self.ports[backend])
            if problem is None:
                continue
            if backend == "sql":
                raise SystemExit(f"the SQL server did not become healthy: {problem}\n    {tail(self.logs[backend])}")
            print(f"TigerBeetle server FAILED its health check: {problem}\n    {tail(self.logs[backend])}", flush=True)
            self.failures["limited_tigerbeetle"] = f"the app server on TigerBeetle is not healthy: {problem}"
            stop_server(self.servers.pop(backend))
        self.active = [label for label, (backend, _) in CONFIGS.items() if backend in self.servers]
        self.results["configurations"] = {label: {"backend": CONFIGS[label][0], "customers": CONFIGS[label][1]}
                                          for label in self.active}

    def phase(self, label: str, customer: str, total: int, size: int) -> dict[str, Any]:
        """``total`` events of ``customer`` in batches of ``size`` to the configuration's server: events/s,
        latencies and the CPU per 1,000 events of the app, PostgreSQL and the replica."""
        backend = CONFIGS[label][0]
        per_client = per_client_batches(customer, total, size, self.args.clients)
        roots = [self.servers[backend].pid, self.postmaster] + ([self.replica.pid] if self.replica is not None else [])
        before = tree_cpus(*roots)
        elapsed, lat, totals = drive(self.ports[backend], self.key, per_client, BATCH_PATH,
                                     deadline_s=self.args.phase_timeout, request_timeout=self.args.request_timeout)
        after = tree_cpus(*roots)
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
                "app_cpu_ms_per_1000": per_1000(self.servers[backend].pid),
                "pg_cpu_ms_per_1000": per_1000(self.postmaster),
                "tb_cpu_ms_per_1000": per_1000(self.replica.pid) if self.replica is not None else None}

    def fail(self, label: str, exc: BaseException) -> None:
        """Report a failed configuration and drop it from the later rounds; without plain or SQL, stop."""
        backend = CONFIGS[label][0]
        self.failures[label] = f"{type(exc).__name__}: {exc}"
        print(f"!! {label} FAILED: {self.failures[label]}\n    server log ({backend}):\n    {tail(self.logs[backend])}",
              flush=True)
        if label == "plain" or backend == "sql":
            raise SystemExit(f"{label} failed: the run has no baseline")
        self.active.remove(label)

    def warm_up(self) -> None:
        """Every server's workers import, connect and (TigerBeetle) open their clients before a measurement."""
        warm = min(self.args.events, 16 * 1000)
        for label, customer in (("plain", "bench-1000"), ("limited_sql", "limited-rt"),
                                ("limited_tigerbeetle", "tblimited-rt"), ("guarded_sql", "guarded-single"),
                                ("guarded_tigerbeetle", "tbguarded-single")):
            if label in self.active:
                try:
                    self.phase(label, customer, warm, 1000)
                except BenchFailure as exc:
                    self.fail(label, exc)
        if "plain" in self.active and "limited_tigerbeetle" in self.active:  # and the plain path on the TB server
            drive(self.ports["tigerbeetle"], self.key, per_client_batches("bench-100", warm, 1000, self.args.clients),
                  BATCH_PATH, deadline_s=self.args.phase_timeout, request_timeout=self.args.request_timeout)

    def rounds(self, size: int) -> None:
        """Every active configuration once per round, fresh customers each time, then the medians."""
        runs: dict[str, list[dict]] = {label: [] for label in CONFIGS}
        for round_ in range(self.args.rounds):
            # the order rotates every round: drift on this shared machine hits every configuration alike
            order = [c for c in CONFIGS if c in self.active]
            order = order[round_ % len(order):] + order[:round_ % len(order)]
            for label in order:
                if label not in self.active:
                    continue
                customer = f"{CONFIGS[label][1]}-{size}-r{round_}"
                try:
                    run_ = self.phase(label, customer, self.args.events, size)
                except BenchFailure as exc:
                    self.fail(label, exc)
                    continue
                run_["round"] = round_ + 1
                runs[label].append(run_)
                print(f"{label} batch {size} round {round_ + 1}: {run_}", flush=True)
        summarise(self.results, runs, size)

    def reserve_settle(self) -> None:
        """Reserve+settle round trips on each backend, the backends interleaved in chunks."""
        rs: dict[str, list[float]] = {b: [] for b in self.servers}
        chunk = max(1, min(100, self.args.round_trips // 10))
        for i, first in enumerate(range(0, self.args.round_trips, chunk)):
            order = list(rs) if i % 2 == 0 else list(reversed(rs))
            for backend in order:
                if backend == "tigerbeetle" and "reserve_settle_tigerbeetle" in self.failures:
                    continue
                try:
                    rs[backend] += reserve_settle(self.ports[backend], self.key, RESERVE_SETTLE_CUSTOMER[backend],
                                                  range(first, min(first + chunk, self.args.round_trips)),
                                                  self.args.request_timeout)
                except BenchFailure as exc:
                    self.failures[f"reserve_settle_{backend}"] = str(exc)
                    print(f"!! reserve+settle on {backend} FAILED: {exc}\n    {tail(self.logs[backend])}", flush=True)
                    if backend == "sql":
                        raise SystemExit("reserve+settle failed on the SQL ledger") from exc
        for backend, latencies in rs.items():
            if latencies:
                self.results[f"reserve_settle_{backend}"] = {"round_trips": len(latencies),
                                                             "p50_ms": round(pct(latencies, 0.5), 2),
                                                             "p99_ms": round(pct(latencies, 0.99), 2)}

    def guarded_singles(self) -> None:
        """Single guarded events (quota, cap, budget, run, anomaly counter) from 1 client, per backend."""
        for backend, customer in (("sql", "guarded-single"), ("tigerbeetle", "tbguarded-single")):
            if backend not in self.servers:
                continue
            bodies = [json.dumps(event(customer, 20_000_000 + i)).encode() for i in range(self.args.singles)]
            try:
                elapsed, lat, totals = drive(self.ports[backend], self.key, [bodies], "/api/v1/events",
                                             deadline_s=self.args.phase_timeout or 600,
                                             request_timeout=self.args.request_timeout)
            except BenchFailure as exc:
                self.failures[f"guarded_single_{backend}"] = str(exc)
                continue
            self.results[f"guarded_single_{backend}"] = {
                "requests": len(bodies), "req_per_s": round(len(bodies) / elapsed), "p50_ms": round(pct(lat, 0.5), 2),
                "p99_ms": round(pct(lat, 0.99), 2), "http": {k: v for k, v in totals.items() if isinstance(k, int)}}

    def client_alone(self) -> None:
        """The ledger alone: the TigerBeetle client from this process, against the same replica."""
        if self.replica is None:
            return
        pid = self.replica.pid
        try:
            self.results["tigerbeetle_client"] = micro_bench(self.replica.address, lambda: tree_cpus(pid)[pid],
                                                             calls=self.args.micro_calls,
                                                             lookups=self.args.micro_lookups)
        except (RuntimeError, TimeoutError, OSError) as exc:
            self.failures["tigerbeetle_client"] = f"{type(exc).__name__}: {exc}"
            print(f"!! TigerBeetle client micro-benchmark FAILED: {exc}", flush=True)


def ledger_mode(args: argparse.Namespace, env: dict[str, str], key: str, work: Path, postmaster: int) -> None:
    """Run the ledger bench; print the results as JSON, write them to bench/results/, print the table."""
    run = LedgerRun(args, env, key, work, postmaster)
    try:
        run.measure()
    finally:
        run.stop()
    print(json.dumps(run.results, indent=2))
    write_results("ledger", run.results)
    print(report(run.results))


def summarise(results: dict, runs: dict[str, list[dict]], size: int) -> None:
    keys = ("events_per_s", "p50_ms", "p99_ms", "app_cpu_ms_per_1000", "pg_cpu_ms_per_1000", "tb_cpu_ms_per_1000")
    for label, done in runs.items():
        if not done:
            continue
        medians = {k: statistics.median(r[k] for r in done) for k in keys if done[0][k] is not None}
        results[f"{label}_{size}"] = {**{k: round(v, 1) for k, v in medians.items()},
                                      "events_per_s": round(medians["events_per_s"]), "rounds": done}
    plain = results.get(f"plain_{size}")
    for label in LIMITED:
        limited = results.get(f"{label}_{size}")
        if plain is None or limited is None:
            continue
        limited["overhead"] = round(1 - limited["events_per_s"] / plain["events_per_s"], 3)
        plain_by_round = {r["round"]: r["events_per_s"] for r in plain["rounds"]}
        limited["overhead_per_round"] = [round(1 - r["events_per_s"] / plain_by_round[r["round"]], 3)
                                         for r in limited["rounds"] if r["round"] in plain_by_round]
        limited["app_cpu_added_ms_per_1000"] = round(limited["app_cpu_ms_per_1000"] - plain["app_cpu_ms_per_1000"], 1)


def _size_lines(results: dict, size: int) -> list[str]:
    lines = [f"\nbatches of {size:,}:",
             f"  {'configuration':<22}{'events/s':>10}{'overhead':>10}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'app CPU':>9}{'PG CPU':>8}{'TB CPU':>8}  (CPU: ms per 1,000 events)"]
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
    return lines


def _client_line(client: dict) -> str:
    ct, lk = client["create_transfers"], client["lookup_accounts"]
    return (f"TigerBeetle client from the bench process: create_transfers of {ct['transfers_per_call']:,} "
            f"linked transfers p50 {ct['wall_p50_ms']} ms, p99 {ct['wall_p99_ms']} ms "
            f"(client CPU {ct['client_cpu_p50_ms']} ms, replica CPU {ct['replica_cpu_mean_ms']} ms, "
            f"building the objects {ct['build_p50_ms']} ms more; {ct['transfers_per_s']:,} transfers/s); "
            f"lookup_accounts p50 {lk['wall_p50_ms']} ms, p99 {lk['wall_p99_ms']} ms")


def report(results: dict) -> str:
    """The figures the docs quote, as a table."""
    lines = [f"\nbench-ledger: {results['events']:,} events per phase, medians of {results['rounds']} rounds, "
             f"{results['cpus']} CPUs, {results['gunicorn_workers']} gunicorn workers x 4 threads per backend, "
             f"{results['clients']} clients"]
    for size in results["sizes"]:
        lines += _size_lines(results, size)
    for backend in ("sql", "tigerbeetle"):
        rs = results.get(f"reserve_settle_{backend}")
        if rs:
            lines.append(f"reserve+settle on {backend}: p50 {rs['p50_ms']} ms, p99 {rs['p99_ms']} ms "
                         f"({rs['round_trips']} round trips)")
    for backend in ("sql", "tigerbeetle"):
        single = results.get(f"guarded_single_{backend}")
        if single:
            lines.append(f"single guarded event on {backend}, 1 client: p50 {single['p50_ms']} ms, p99 "
                         f"{single['p99_ms']} ms ({single['requests']} requests, HTTP {single['http']})")
    client = results.get("tigerbeetle_client")
    if client:
        lines.append(_client_line(client))
    for label, why in results["failures"].items():
        lines.append(f"FAILED or not measured: {label}: {why}")
    if results.get("server_tracebacks"):
        lines.append(f"tracebacks in the server logs of: {', '.join(results['server_tracebacks'])}")
    return "\n".join(lines)
