"""Fixtures of the limits' tests."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(params=["together", "held"])
def debit_mode(request: Any, monkeypatch: Any, settings: Any) -> str:
    """Every test that uses it in the two ways ingest books the ledger: in the event insert's transaction,
    one transfer per account and batch (a ledger sharing the database: the SQL backend); held in the ledger
    per account and batch before the insert and posted after it (ledger.holds: TigerBeetle). On the SQL
    backend the second runs with it made to look separate; on TigerBeetle ``together`` is not a way it has."""
    from ledger.backends.sql import SqlLedger

    if request.param == "together" and settings.LEDGER_BACKEND != "sql":
        pytest.skip("the SQL ledger's own way (run on the SQL backend)")
    if request.param != "together":
        monkeypatch.setattr(SqlLedger, "shares_database", False)
    return str(request.param)
