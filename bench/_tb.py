"""A throwaway TigerBeetle replica for the benchmarks, and a micro-benchmark of the Python client against it.

The replica runs in production mode (no ``--development``): ``format`` a data file in a temporary
directory, ``start --addresses=127.0.0.1:<port> --cache-grid=256MiB``. Call ``Replica.stop()`` in a
``finally`` whatever happens. Every client call here runs under our own deadline: the client retries
for ever on its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def tb_binary() -> tuple[str | None, str]:
    """The server binary: ``TIGERBEETLE_BIN``, else ``tigerbeetle`` on PATH, else
    ``../shared/tigerbeetle/tigerbeetle`` from the repository root. Returns (path or None, where it was looked for)."""
    explicit = os.environ.get("TIGERBEETLE_BIN")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit, f"TIGERBEETLE_BIN={explicit}"
        return None, f"TIGERBEETLE_BIN={explicit} is not an executable file"
    on_path = shutil.which("tigerbeetle")
    if on_path:
        return on_path, f"{on_path} (PATH)"
    shared = (ROOT.parent / "shared" / "tigerbeetle" / "tigerbeetle").resolve()
    if os.access(shared, os.X_OK):
        return str(shared), str(shared)
    return None, f"no TIGERBEETLE_BIN, no tigerbeetle on PATH, nothing at {shared}"


def call_with_timeout(client: Any, call: Callable[[], T], timeout: float) -> T:
    """Run one client call in a thread; past ``timeout`` close the client (ends its retry loop) and raise."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        with contextlib.suppress(Exception, AssertionError):
            client.close()
        worker.join(1.0)
        raise TimeoutError(f"TigerBeetle did not answer within {timeout}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class Replica:
    """One production-mode replica (cluster 0, replica 0 of 1) on 127.0.0.1:``port``."""

    def __init__(self, binary: str, directory: Path, port: int) -> None:
        self.binary, self.directory, self.port = binary, directory, port
        self.address = f"127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "tigerbeetle.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = self.directory / "0_0.tigerbeetle"
        subprocess.run([self.binary, "format", "--cluster=0", "--replica=0", "--replica-count=1", str(data)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [self.binary, "start", f"--addresses={self.address}", "--cache-grid=256MiB", str(data)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:  # the port first (a client started before it listens logs a refusal every few ms)
            if self.process.poll() is not None:
                raise RuntimeError(f"tigerbeetle exited with {self.process.returncode}: {self.tail()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"tigerbeetle did not listen on {self.address} within {timeout}s: {self.tail()}")
            time.sleep(0.1)
        import tigerbeetle as tb

        client = tb.ClientSync(cluster_id=0, replica_addresses=self.address)
        try:
            call_with_timeout(client, lambda: client.lookup_accounts([1]), max(1.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            raise RuntimeError(f"tigerbeetle on {self.address} did not answer a lookup: {self.tail()}") from exc
        client.close()

    def tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def micro_bench(address: str, cpu_of: Callable[[], float], *, calls: int, lookups: int, events: int = 1000,
                timeout: float = 30) -> dict[str, Any]:
    """The ledger's own time, from this process against the replica, without the app: ``calls`` times
    ``create_transfers`` of ``events`` linked chains of three transfers (usage counter, quota, spend cap:
    what a limited 1,000-event batch sends), and ``lookups`` single ``lookup_accounts`` round trips of
    four ids. Per call: the time to build the ``tb.Transfer`` objects (not part of the call), the call's
    wall time, this process's CPU during the call (the client encoding the transfers and reading the
    results, its I/O thread) and the replica's CPU during the call (``cpu_of``)."""
    import tigerbeetle as tb

    client = tb.ClientSync(cluster_id=0, replica_addresses=address)
    try:
        base = int.from_bytes(os.urandom(12), "big") << 32  # fresh ids: the replica is shared with the app
        flags = tb.AccountFlags
        ids = [base + i for i in range(1, 6)]
        counter, quota, cap, operator, spend = ids
        accounts = [tb.Account(id=counter, ledger=1, code=4, flags=flags.NONE),
                    tb.Account(id=quota, ledger=1, code=2, flags=flags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                    tb.Account(id=cap, ledger=1, code=3, flags=flags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                    tb.Account(id=operator, ledger=1, code=103, flags=flags.NONE),
                    tb.Account(id=spend, ledger=1, code=104, flags=flags.NONE)]
        created = call_with_timeout(client, lambda: client.create_accounts(accounts), timeout)
        allocations = [tb.Transfer(id=base + 10, debit_account_id=operator, credit_account_id=quota, amount=10**30,
                                   ledger=1, code=2),
                       tb.Transfer(id=base + 11, debit_account_id=spend, credit_account_id=cap, amount=10**30,
                                   ledger=1, code=3)]
        allocated = call_with_timeout(client, lambda: client.create_transfers(allocations), timeout)
        setup = [r.status.name for r in created] + [r.status.name for r in allocated]
        if any(name != "CREATED" for name in setup):
            raise RuntimeError(f"micro-benchmark setup: {setup}")
        next_id = base + 100
        walls: list[float] = []
        client_cpu: list[float] = []
        replica_cpu: list[float] = []
        builds: list[float] = []
        linked = tb.TransferFlags.LINKED
        for _ in range(calls):
            build0 = time.perf_counter()
            batch = []
            for _event in range(events):
                batch.append(tb.Transfer(id=next_id, debit_account_id=operator, credit_account_id=counter, amount=700,
                                         ledger=1, code=13, flags=linked))
                batch.append(tb.Transfer(id=next_id + 1, debit_account_id=quota, credit_account_id=operator, amount=700,
                                         ledger=1, code=10, flags=linked))
                batch.append(tb.Transfer(id=next_id + 2, debit_account_id=cap, credit_account_id=spend, amount=1400,
                                         ledger=1, code=11))
                next_id += 3
            builds.append(time.perf_counter() - build0)
            cpu0, replica0, wall0 = time.process_time(), cpu_of(), time.perf_counter()
            results = call_with_timeout(client, lambda b=batch: client.create_transfers(b), timeout)  # type: ignore[misc]
            walls.append(time.perf_counter() - wall0)
            client_cpu.append(time.process_time() - cpu0)
            replica_cpu.append(cpu_of() - replica0)
            bad = [r.status.name for r in results if r.status.name != "CREATED"]
            if bad:
                raise RuntimeError(f"micro-benchmark create_transfers: {bad[:3]}")
        lookup_walls = []
        for _ in range(lookups):
            start = time.perf_counter()
            call_with_timeout(client, lambda: client.lookup_accounts([counter, quota, cap, operator]), timeout)
            lookup_walls.append(time.perf_counter() - start)
    finally:
        with contextlib.suppress(Exception, AssertionError):
            client.close()
    return {
        "create_transfers": {"calls": calls, "transfers_per_call": 3 * events,
                             "build_p50_ms": _ms(builds, 0.5), "wall_p50_ms": _ms(walls, 0.5),
                             "wall_p99_ms": _ms(walls, 0.99),
                             "client_cpu_p50_ms": round(statistics.median(client_cpu) * 1000, 2),
                             # /proc counts in clock ticks (10 ms): the mean over the calls, not a median
                             "replica_cpu_mean_ms": round(sum(replica_cpu) / len(replica_cpu) * 1000, 2),
                             "transfers_per_s": round(3 * events / statistics.median(walls))},
        "lookup_accounts": {"round_trips": lookups, "ids": 4, "wall_p50_ms": _ms(lookup_walls, 0.5),
                            "wall_p99_ms": _ms(lookup_walls, 0.99)},
    }
