"""Ledger backend selection: ``sql`` (embedded default) or ``tigerbeetle`` (TIGERBEETLE_ADDRESSES)."""

from __future__ import annotations

import threading

from django.conf import settings

from ledger.backends.base import LedgerBackend

_local = threading.local()


def ledger_backend_name() -> str:
    return str(settings.LEDGER_BACKEND)


def get_ledger() -> LedgerBackend:
    """The configured backend. TigerBeetle clients are per thread (the client is not shared across
    threads here) and reused; the SQL backend is stateless."""
    name = ledger_backend_name()
    key = (name, settings.TIGERBEETLE_ADDRESSES, settings.TIGERBEETLE_CLUSTER_ID)
    cached = getattr(_local, "ledger", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    backend: LedgerBackend
    if name == "sql":
        from ledger.backends.sql import SqlLedger

        backend = SqlLedger()
    elif name == "tigerbeetle":
        from ledger.backends.tigerbeetle import TigerBeetleLedger

        backend = TigerBeetleLedger(addresses=settings.TIGERBEETLE_ADDRESSES, cluster_id=settings.TIGERBEETLE_CLUSTER_ID,
                                    timeout=settings.LEDGER_TIMEOUT_SECONDS)
    else:
        raise RuntimeError(f"unknown LEDGER_BACKEND {name!r}")
    _local.ledger = (key, backend)
    return backend


def ledger_ping() -> None:
    """Raise if the configured ledger backend cannot answer."""
    get_ledger().ping()
