"""Helpers of the tests that start real processes (``make run``): a free port, this machine's processes whose
/proc entry matches, and a PostgreSQL server of a test's own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pids_where(matches: Callable[[Path], bool]) -> list[int]:
    """The pids whose /proc entry ``matches`` (a process that ends meanwhile, or is not ours to read, is left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if matches(entry):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


# --- a throwaway PostgreSQL server of a test's own (stopped and started by the test) -------------------------
def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary (``initdb``, ``pg_ctl``): on PATH or under /usr/lib/postgresql, else None."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


class OwnPostgres:
    """A PostgreSQL cluster in ``folder`` on ``port`` (loopback, small buffers): ``init()`` once, then
    ``start()`` / ``stop()`` as the test needs; ``url`` is its ``postgres`` database."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.url = f"postgres://postgres@127.0.0.1:{port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(_as_postgres([str(pg_bin("pg_ctl")), "-D", str(self.folder / "data"), *args]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        subprocess.run(_as_postgres([str(pg_bin("initdb")), "-D", str(self.folder / "data"), "-U", "postgres",
                                     "-A", "trust"]), check=True, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        self._ctl("-l", str(self.folder / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c shared_buffers=32MB", "start")

    def stop(self) -> None:
        """Fast shutdown (open connections are cut); harmless when it is not running."""
        if (self.folder / "data" / "postmaster.pid").exists():
            self._ctl("-m", "fast", "-w", "stop")
