"""Breakers, budgets and pauses exact under 32 concurrent clients (PostgreSQL; also run on TigerBeetle)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.db import connection

from billing.common.auth import Principal
from billing.guardrails.budgets import budget_create
from billing.guardrails.models import Run
from billing.guardrails.pauses import pause_create, pause_lift
from billing.usage.models import UsageEvent
from billing.usage.services import events_ingest
from tests import factories

ADMIN = Principal(scopes=frozenset({"admin"}))
AT = datetime.now(timezone.utc) - timedelta(seconds=5)
CLIENTS = 32
pytestmark = [pytest.mark.ledger, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def subscribe(customer: Any, **terms: Any) -> None:
    text = factories.catalog(factories.plan("metered", [{"meter": "llm_tokens", "model": "per_unit",
                                                          "unit_price": "0.01"}], **terms))
    factories.subscribe(customer, "metered", start=datetime(2026, 1, 1, tzinfo=timezone.utc),
                        now=datetime.now(timezone.utc), catalog_text=text)


def body(event_id: str, **extra: Any) -> bytes:
    return json.dumps({"event_id": event_id, "customer": "acme-co", "meter": "llm_tokens", "quantity": "1",
                       "timestamp": AT.isoformat(), **extra}).encode()


def hammer(per_client: int, batch: int, prefix: str = "c", **extra: Any) -> list[str]:
    """CLIENTS clients at once, each sending per_client events in batches; every answer's status or code."""
    barrier = threading.Barrier(CLIENTS)
    lock = threading.Lock()
    statuses: list[str] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for start in range(0, per_client, batch):
                raw = [body(f"{prefix}{n}-{i}", **extra) for i in range(start, min(start + batch, per_client))]
                results = events_ingest(principal=ADMIN, raw_events=raw)
                with lock:
                    statuses.extend(r.error.code if r.error else r.status for r in results)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        list(pool.map(work, range(CLIENTS)))
    return statuses


def test_32_clients_posting_steps_of_one_run_with_max_steps_100_accept_exactly_100(acme):
    subscribe(acme, run_limits={"max_steps": 100})

    statuses = hammer(per_client=10, batch=1, trace={"run_id": "agent-1"})

    assert statuses.count("accepted") == 100
    assert statuses.count("circuit_open") == CLIENTS * 10 - 100
    assert UsageEvent.objects.filter(billable=True).count() == 100
    assert Run.objects.get(run_id="agent-1").state == Run.State.TRIPPED


def test_32_clients_never_exceed_a_blocking_budget(acme):
    subscribe(acme)
    budget_create(customer=acme, budget_id="u42", scope={"dimension": {"end_user": "u-42"}}, amount="2.50",
                  period="month", action="block")

    statuses = hammer(per_client=20, batch=5, dimensions={"end_user": "u-42"})

    assert statuses.count("accepted") == 250
    assert set(statuses) == {"accepted", "budget_exceeded"}
    assert UsageEvent.objects.filter(billable=True).count() == 250


def test_32_clients_are_all_refused_while_paused_and_all_accepted_after(acme):
    subscribe(acme)
    pause = pause_create(customer=acme, reason="review")

    assert set(hammer(per_client=5, batch=5)) == {"paused"}

    pause_lift(customer=acme, pause_id=pause.pause_id)
    # a retry of a refused event stays refused; new events are accepted
    assert set(hammer(per_client=5, batch=5)) == {"paused"}
    assert set(hammer(per_client=5, batch=5, prefix="after")) == {"accepted"}
    assert UsageEvent.objects.filter(billable=True).count() == CLIENTS * 5
