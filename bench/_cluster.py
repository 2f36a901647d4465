"""A three-replica TigerBeetle cluster on loopback for the drills (``make drills``): formatted in a temporary
directory, each replica a process of its own that the drill can SIGKILL and start again on the same data file.

Production mode (no ``--development``: 32 client sessions, full-size requests) with a smaller grid cache
than ``make run``'s, so that three replicas fit beside the app on one machine (about 1.4 GiB each).
The primary is read from the replicas' own logs: each logs its move to status normal with the view and its
role (``transition_to_normal_from_...: view=1..1 primary``); the primary of view v is replica v mod 3.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

CACHE_GRID = "128MiB"
_NORMAL = re.compile(rb"transition_to_normal_from_\w+: view=(?:\d+\.\.)?(\d+) (primary|backup)")


class Cluster:
    """``count`` replicas of cluster 0 on 127.0.0.1:``ports``, data files and logs in ``directory``."""

    def __init__(self, binary: str, directory: Path, ports: list[int]) -> None:
        self.binary, self.directory, self.ports = binary, directory, ports
        self.count = len(ports)
        self.addresses = ",".join(f"127.0.0.1:{port}" for port in ports)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def data_file(self, replica: int) -> Path:
        return self.directory / f"0_{replica}.tigerbeetle"

    def log(self, replica: int) -> Path:
        return self.directory / f"replica-{replica}.log"

    def format(self) -> None:
        for replica in range(self.count):
            with self.log(replica).open("ab") as out:
                subprocess.run([self.binary, "format", "--cluster=0", f"--replica={replica}",
                                f"--replica-count={self.count}", str(self.data_file(replica))],
                               stdout=out, stderr=subprocess.STDOUT, check=True)

    def start(self, replica: int) -> None:
        """Start one replica on its data file (after a kill too: the same file, the same address)."""
        assert replica not in self.processes or self.processes[replica].poll() is not None, f"replica {replica} runs"
        with self.log(replica).open("ab") as out:
            self.processes[replica] = subprocess.Popen(
                [self.binary, "start", f"--addresses={self.addresses}", f"--cache-grid={CACHE_GRID}",
                 str(self.data_file(replica))], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def start_all(self) -> None:
        for replica in range(self.count):
            self.start(replica)

    def kill(self, replica: int) -> None:
        """SIGKILL: no flush, no goodbye to the others, as a crash or a power cut."""
        process = self.processes[replica]
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def kill_all(self) -> None:
        for replica, process in self.processes.items():
            if process.poll() is None:
                self.kill(replica)

    def running(self) -> list[int]:
        return [replica for replica, process in self.processes.items() if process.poll() is None]

    def view(self) -> tuple[int, int] | None:
        """(the highest view a replica reached status normal in, its primary), from the logs."""
        views = []
        for replica in range(self.count):
            with contextlib.suppress(OSError):
                views += [int(view) for view, _role in _NORMAL.findall(self.log(replica).read_bytes())]
        if not views:
            return None
        return max(views), max(views) % self.count

    def primary(self, timeout: float = 30) -> int:
        """The replica leading the current view, once one is in status normal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.view()
            if found is not None and found[1] in self.running():
                return found[1]
            time.sleep(0.2)
        raise RuntimeError(f"no primary in status normal within {timeout:.0f} s: {self.view()}")

    def normal_lines(self, replica: int) -> int:
        """How many times ``replica`` reached status normal (its log): a restarted one has rejoined once it grows."""
        try:
            return len(_NORMAL.findall(self.log(replica).read_bytes()))
        except OSError:
            return 0

    def tail(self, replica: int, lines: int = 5) -> str:
        try:
            return " | ".join(self.log(replica).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
