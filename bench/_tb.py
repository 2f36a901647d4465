"""A throwaway TigerBeetle replica for the benchmarks, and a micro-benchmark of the Python client against it.

The replica is started the way ``make run`` starts one (``portal.devserver.start_tigerbeetle``: production
mode, ``--cache-grid=256MiB``), in a temporary directory. Call ``Replica.stop()`` in a ``finally`` whatever
happens. Every client call runs under the ledger's own deadline (``TimedClient``): the client retries for
ever on its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench/ scripts run from the checkout: the project's own modules

from ledger.backends.tigerbeetle import TimedClient  # noqa: E402
from portal.devserver import LaunchError, start_tigerbeetle, tigerbeetle_binary  # noqa: E402


def tb_binary() -> tuple[str | None, str]:
    """The server binary as ``make run`` finds it (``TIGERBEETLE_BIN``, else ``tigerbeetle`` on PATH), else a
    ``tigerbeetle`` in a ``shared/tigerbeetle`` folder beside the checkout. Returns (path or None, where)."""
    try:
        found = tigerbeetle_binary()
    except LaunchError as exc:
        return None, str(exc)
    if found:
        return found, found
    beside = (ROOT.parent / "shared" / "tigerbeetle" / "tigerbeetle").resolve()
    if os.access(beside, os.X_OK):
        return str(beside), str(beside)
    return None, f"no TIGERBEETLE_BIN, no tigerbeetle on PATH, nothing at {beside}"


class Replica:
    """One production-mode replica (cluster 0, replica 0 of 1) on 127.0.0.1:``port``, data in ``directory``."""

    def __init__(self, binary: str, directory: Path, port: int) -> None:
        self.binary, self.directory, self.port = binary, directory, port
        self.address = f"127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "tigerbeetle" / "tigerbeetle.log"  # where start_tigerbeetle writes it

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        env = {**os.environ, "TOLLGATE_DATA_DIR": str(self.directory), "TIGERBEETLE_PORT": str(self.port),
               "TIGERBEETLE_CLUSTER_ID": "0"}
        try:
            self.process, self.address, _data = start_tigerbeetle(self.binary, env, sys.executable)
        except LaunchError as exc:
            raise RuntimeError(str(exc)) from exc

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

    client = TimedClient(0, address, timeout)
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
        created = client.create_accounts(accounts)
        allocations = [tb.Transfer(id=base + 10, debit_account_id=operator, credit_account_id=quota, amount=10**30,
                                   ledger=1, code=2),
                       tb.Transfer(id=base + 11, debit_account_id=spend, credit_account_id=cap, amount=10**30,
                                   ledger=1, code=3)]
        allocated = client.create_transfers(allocations)
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
            results = client.create_transfers(batch)
            walls.append(time.perf_counter() - wall0)
            client_cpu.append(time.process_time() - cpu0)
            replica_cpu.append(cpu_of() - replica0)
            bad = [r.status.name for r in results if r.status.name != "CREATED"]
            if bad:
                raise RuntimeError(f"micro-benchmark create_transfers: {bad[:3]}")
        lookup_walls = []
        for _ in range(lookups):
            start = time.perf_counter()
            client.lookup_accounts([counter, quota, cap, operator])
            lookup_walls.append(time.perf_counter() - start)
    finally:
        client.shutdown()
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
