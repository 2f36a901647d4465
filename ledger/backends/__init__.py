"""Ledger backend selection. The full interface (accounts, transfers, two-phase) lands with the
ledger issue; for now the selector and the readiness probe are real for both backends."""

from __future__ import annotations

from django.conf import settings
from django.db import connection


def ledger_backend_name() -> str:
    return str(settings.LEDGER_BACKEND)


def ledger_ping() -> None:
    """Raise if the configured ledger backend cannot answer."""
    name = ledger_backend_name()
    if name == "sql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return
    if name == "tigerbeetle":
        from ledger.backends.tigerbeetle import ping

        ping(settings.TIGERBEETLE_ADDRESSES, settings.TIGERBEETLE_CLUSTER_ID, settings.LEDGER_TIMEOUT_SECONDS)
        return
    raise RuntimeError(f"unknown LEDGER_BACKEND {name!r}")
