"""Ingest's optimistic pass reads the customer's accounts without the SQL ledger's expiry sweep
(``LedgerBackend.peek_accounts``: one statement fewer per limited batch). A hold that expired and is not
released yet may then refuse an event in that pass only: the refusal goes to the careful pass, which
releases expired holds before it locks, and decides exactly."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.usage.models import UsageEvent
from billing.usage.services import events_ingest
from tests.billing.guardrails.test_limits_at_ingest import ADMIN, body, catalog, subscribe
from tests.billing.guardrails.test_reservations import quota, reserve
from tests.conftest import post_json

pytestmark = [pytest.mark.django_db, pytest.mark.ledger]

SWEEP = "FROM ledger_transfer WHERE state"  # SqlLedger.expire_pending's read


def _sql_only() -> None:
    if settings.LEDGER_BACKEND != "sql":
        pytest.skip("the SQL ledger's expiry sweep (TigerBeetle expires holds itself)")


def _swept_long_ago(monkeypatch: pytest.MonkeyPatch) -> None:
    from ledger.backends import sql

    monkeypatch.setattr(sql, "_last_sweep", -1e9)  # the next read or write of this process would sweep


@pytest.mark.postgres  # on SQLite the booking itself reads and writes through the ledger's sweeping calls
def test_the_optimistic_pass_of_a_batch_that_fits_runs_no_expiry_sweep(acme: Any, monkeypatch: pytest.MonkeyPatch
                                                                        ) -> None:
    _sql_only()
    subscribe(acme, catalog(hard="100"))
    assert [r.status for r in events_ingest(principal=ADMIN, raw_events=[body("warm", "1")])] == ["accepted"]
    _swept_long_ago(monkeypatch)

    with CaptureQueriesContext(connection) as queries:
        results = events_ingest(principal=ADMIN, raw_events=[body("a", "10"), body("b", "20")])

    assert [r.status for r in results] == ["accepted", "accepted"]
    assert not [q["sql"] for q in queries.captured_queries if SWEEP in q["sql"]]
    assert UsageEvent.objects.filter(customer=acme, billable=True).count() == 3


def test_a_hold_expired_but_not_released_refuses_nothing(acme: Any, ingest: Any, admin: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """90 of 100 held by a reservation whose hold expired a moment ago, not yet released by any sweep: an
    event of 100 is accepted (the optimistic pass refuses on the stale hold, the careful pass releases it
    first), and the quota is debited exactly once."""
    _sql_only()
    subscribe(acme, catalog(hard="100"))
    assert reserve(ingest, "short", "90", ttl=1).status_code == 201
    time.sleep(1.2)
    _swept_long_ago(monkeypatch)

    with CaptureQueriesContext(connection) as queries:
        accepted = post_json(ingest, "/api/v1/events", json.loads(body("after", "100")))

    assert accepted.status_code == 201
    assert [q["sql"] for q in queries.captured_queries if SWEEP in q["sql"]]  # released by the careful pass
    assert (quota(admin)["used"], quota(admin)["reserved"], quota(admin)["remaining"]) == ("100", "0", "0")
    over = post_json(ingest, "/api/v1/events", json.loads(body("over", "1")))
    assert over.status_code == 402 and over.json()["error"]["code"] == "quota_exceeded"
