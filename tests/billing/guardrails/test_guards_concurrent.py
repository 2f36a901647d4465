"""Breakers, budgets and pauses exact under 32 concurrent clients (PostgreSQL; also run on TigerBeetle)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from billing.guardrails.budgets import budget_create
from billing.guardrails.models import Run
from billing.guardrails.pauses import pause_create, pause_lift
from billing.usage.models import UsageEvent
from tests import factories
from tests.billing.guardrails.test_limits_at_ingest import hammer as limits_hammer

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
    return limits_hammer(CLIENTS, per_client, batch, lambda event_id: body(f"{prefix}{event_id}", **extra))


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
