"""Keep ``make run``'s processes running: a child that exits is started again after a backoff, and a stop
ends them all. The development counterpart of systemd's ``Restart=always`` (docs/operations.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

Start = Callable[[], "subprocess.Popen[bytes]"]


class GaveUp(Exception):
    """A child failed again and again right after its start: restarting it more would only hide the cause."""


@dataclass
class Child:
    name: str
    start: Start
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None  # set while it waits for its backoff
    quick_failures: int = 0  # exits in a row, each before it had run ``stable_seconds``
    restarts: int = 0


class Supervisor:
    """Named children, each started by a function. ``check()`` (called every fraction of a second) notices a
    child that exited, logs it and starts it again after ``initial_backoff`` seconds, doubled on each exit
    that follows a short run, up to ``max_backoff``; a run of ``stable_seconds`` resets it. ``max_quick_failures``
    short runs in a row raise ``GaveUp`` (as systemd's start limit does). ``stop()`` ends children together:
    SIGTERM to each, SIGKILL to the process group of any still there after ``stop_timeout``."""

    def __init__(self, *, initial_backoff: float = 1.0, max_backoff: float = 30.0, stable_seconds: float = 60.0,
                 max_quick_failures: int = 6, stop_timeout: float = 15.0, out: IO[str] | None = None,
                 hint: Callable[[str], str] = lambda name: "") -> None:
        self.initial_backoff, self.max_backoff, self.stable_seconds = initial_backoff, max_backoff, stable_seconds
        self.max_quick_failures, self.stop_timeout = max_quick_failures, stop_timeout
        self.out, self.hint = out, hint
        self.children: dict[str, Child] = {}

    def _log(self, text: str) -> None:
        print(text, file=self.out or sys.stderr, flush=True)

    def add(self, name: str, start: Start, proc: subprocess.Popen[bytes] | None = None) -> Child:
        """Supervise ``name``: started now with ``start``, or ``proc`` already running (restarts use ``start``)."""
        child = Child(name, start, proc if proc is not None else start(), time.monotonic())
        self.children[name] = child
        return child

    def backoff(self, child: Child) -> float:
        return float(min(self.max_backoff, self.initial_backoff * 2 ** max(0, child.quick_failures - 1)))

    def check(self, now: float | None = None) -> None:
        """Notice exits, start what waited long enough. Raises ``GaveUp`` for a child that keeps failing."""
        now = time.monotonic() if now is None else now
        for child in self.children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.proc, child.started_at, child.restart_at = child.start(), now, None
                    child.restarts += 1
                continue
            if child.proc is None or child.proc.poll() is None:
                continue
            _kill_group(child.proc)  # what it left behind (a server's own children) must not hold its port
            ran = now - child.started_at
            child.quick_failures = child.quick_failures + 1 if ran < self.stable_seconds else 1
            if child.quick_failures > self.max_quick_failures:
                self._log(f"{child.name} exited with {child.proc.returncode} after {ran:.1f}s, the "
                          f"{child.quick_failures}th quick exit in a row{self.hint(child.name)}; giving up")
                raise GaveUp(child.name)
            delay = self.backoff(child)
            child.restart_at = now + delay
            self._log(f"{child.name} exited with {child.proc.returncode} after {ran:.1f}s{self.hint(child.name)}; "
                      f"restarting it in {delay:g}s")

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.children.values() if c.proc is not None and c.proc.poll() is None]

    def stop(self, names: Iterable[str] | None = None) -> None:
        """Stop ``names`` (all by default) together; none of them is restarted afterwards."""
        chosen = [self.children.pop(n) for n in (list(self.children) if names is None else names) if n in self.children]
        self._terminate([c.proc for c in chosen if c.proc is not None])

    def restart(self, names: Iterable[str]) -> None:
        """Stop ``names`` together and start them again at once (the code changed): no backoff, and the run of
        quick exits starts afresh, so a fix saved after a broken edit is served without waiting."""
        chosen = [self.children[n] for n in names if n in self.children]
        self._terminate([c.proc for c in chosen if c.proc is not None])
        now = time.monotonic()
        for child in chosen:
            child.proc, child.started_at, child.restart_at, child.quick_failures = child.start(), now, None, 0
            child.restarts += 1

    def _terminate(self, procs: list[subprocess.Popen[bytes]]) -> None:
        """SIGTERM to each, SIGKILL to the process group of any still there after ``stop_timeout``; then
        whatever is left in each group (a server's own children) is killed too."""
        running = [proc for proc in procs if proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for proc in procs:
            _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to what remains of an exited child's process group (each child leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left: the usual case
        os.killpg(proc.pid, signal.SIGKILL)
