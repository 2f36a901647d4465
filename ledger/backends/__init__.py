"""Ledger backend selection: ``sql`` (embedded default) or ``tigerbeetle`` (TIGERBEETLE_ADDRESSES).

One backend per process, shared by its threads: a TigerBeetle replica admits a fixed number of clients
(32 in production mode) and drops the rest, so a process keeps exactly one client (docs/ledger.md, the
connection budget). A forked child starts without it (the parent's client threads are not in the child)
and opens its own at its first call (and its own poster of held batches, ledger.holds); the client is
closed when the process exits, after the poster has posted what it was handed."""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from django.conf import settings

from ledger.backends.base import LedgerBackend

_lock = threading.Lock()
_current: tuple[Any, int, LedgerBackend] | None = None  # (settings key, pid, backend)


def ledger_backend_name() -> str:
    return str(settings.LEDGER_BACKEND)


def get_ledger() -> LedgerBackend:
    """The configured backend of this process (made at the first call, again if the settings change)."""
    global _current
    key = (ledger_backend_name(), settings.TIGERBEETLE_ADDRESSES, settings.TIGERBEETLE_CLUSTER_ID,
           settings.LEDGER_TIMEOUT_SECONDS)
    current = _current
    if current is not None and current[0] == key and current[1] == os.getpid():
        return current[2]
    with _lock:
        current = _current
        if current is not None and current[0] == key and current[1] == os.getpid():
            return current[2]
        if current is not None and current[1] == os.getpid():
            current[2].close()  # settings changed (tests): the old client goes
        backend = _make(key[0])
        _current = (key, os.getpid(), backend)
        return backend


def _make(name: str) -> LedgerBackend:
    if name == "sql":
        from ledger.backends.sql import SqlLedger

        return SqlLedger()
    if name == "tigerbeetle":
        from ledger.backends.tigerbeetle import TigerBeetleLedger

        return TigerBeetleLedger(addresses=settings.TIGERBEETLE_ADDRESSES, cluster_id=settings.TIGERBEETLE_CLUSTER_ID,
                                 timeout=settings.LEDGER_TIMEOUT_SECONDS)
    raise RuntimeError(f"unknown LEDGER_BACKEND {name!r}")


def close_ledger() -> None:
    """Close this process's backend (its TigerBeetle client) once its poster has posted what it was handed
    (ledger.holds; at most a few seconds: what is left is the sweep's); the next get_ledger() opens a new one."""
    global _current
    with _lock:
        opened = _current is not None
    if opened:  # a process that never opened a ledger (a script without Django set up) has nothing to drain
        from ledger import holds

        holds.drain(5)
    with _lock:
        current, _current = _current, None
    if current is not None and current[1] == os.getpid():
        current[2].close()


def _forget_after_fork() -> None:
    global _current, _lock
    _current = None  # the parent's client belongs to the parent: never used, never closed here
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(close_ledger)


def ledger_ping() -> None:
    """Raise if the configured ledger backend cannot answer."""
    get_ledger().ping()
