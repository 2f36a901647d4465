"""Helpers of the tests that start real processes (``make run``): a free port, and this machine's processes
whose /proc entry matches."""

from __future__ import annotations

import socket
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
