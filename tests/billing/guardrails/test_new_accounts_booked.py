"""A batch's new ledger accounts (an agent run's steps and spend) and their allocations are created by the
batch's booking, not by ledger calls of their own before it; exact when another request creates them
between the batch's read and its booking. Both ways of booking (conftest.py), on each ledger backend."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.common.auth import Principal
from billing.guardrails import accounts as acc
from billing.usage.services import events_ingest
from ledger.backends import get_ledger
from ledger.backends.sql import SqlLedger
from tests import factories
from tests.billing.guardrails.test_limits_at_ingest import _overtaken_once

ADMIN = Principal(scopes=frozenset({"admin"}))
AT = datetime.now(timezone.utc) - timedelta(seconds=5)
pytestmark = [pytest.mark.usefixtures("debit_mode"), pytest.mark.ledger]


def subscribe(customer: Any, max_steps: int) -> None:
    terms: dict[str, Any] = {"limits": [{"meter": "llm_tokens", "hard": "1000000"}], "spend_cap": "1000",
             "run_limits": {"max_steps": max_steps, "max_spend": "1000"}}
    text = factories.catalog(factories.plan("metered", [{"meter": "llm_tokens", "model": "per_unit",
                                                          "unit_price": "0.01"}], **terms))
    factories.subscribe(customer, "metered", start=datetime(2026, 1, 1, tzinfo=timezone.utc),
                        now=datetime.now(timezone.utc), catalog_text=text)


def body(event_id: str, run: str) -> bytes:
    return json.dumps({"event_id": event_id, "customer": "acme-co", "meter": "llm_tokens", "quantity": "1",
                       "timestamp": AT.isoformat(), "trace": {"run_id": run}}).encode()


def ingest(*events: bytes) -> list[str]:
    return [r.error.code if r.error else r.status for r in events_ingest(principal=ADMIN, raw_events=list(events))]


def run_steps(customer: Any, run: str) -> tuple[int, int]:
    """The run's steps account: (allocated, steps taken)."""
    account = get_ledger().lookup_accounts([acc.Ids(customer.pk).run_steps(run)])[acc.Ids(customer.pk).run_steps(run)]
    return account.credits_posted, account.debits_posted


@pytest.mark.django_db
def test_a_new_runs_accounts_and_allocations_come_with_its_first_booking(acme):
    subscribe(acme, max_steps=3)
    assert ingest(body("warm", "r0")) == ["accepted"]  # the period's accounts exist

    assert ingest(body("a1", "r1"), body("a2", "r1")) == ["accepted", "accepted"]

    # the run's steps account exists, allocated max_steps and debited one step per event; the breaker holds
    assert run_steps(acme, "r1") == (3, 2)
    spend = acc.Ids(acme.pk).run_spend("USD", "r1")
    assert get_ledger().lookup_accounts([spend])[spend].debits_posted > 0
    assert ingest(body("a3", "r1"), body("a4", "r1")) == ["accepted", "circuit_open"]
    assert run_steps(acme, "r1") == (3, 3)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)  # autocommit, as served: what a booking creates is remembered at once
@pytest.mark.parametrize("debit_mode", ["together"], indirect=True)
def test_a_batch_that_starts_runs_costs_the_statements_of_one_that_continues_them(acme, debit_mode, monkeypatch):
    monkeypatch.setattr(SqlLedger, "_expire_due", lambda self: None)  # the timed sweep of holds: not per batch
    subscribe(acme, max_steps=100)
    assert ingest(body("warm", "r0")) == ["accepted"]
    connection.ensure_connection()

    with CaptureQueriesContext(connection) as new_runs:
        assert ingest(*(body(f"n{i}", f"new-{i % 4}") for i in range(8))) == ["accepted"] * 8
    with CaptureQueriesContext(connection) as same_runs:
        assert ingest(*(body(f"s{i}", f"new-{i % 4}") for i in range(8))) == ["accepted"] * 8

    # (besides the insert with its booking, one statement): the customers' terms, then their accounts
    assert [q["sql"][:40] for q in new_runs.captured_queries] == [q["sql"][:40] for q in same_runs.captured_queries]
    assert len(new_runs.captured_queries) == 2
    assert [run_steps(acme, f"new-{i}") for i in range(4)] == [(100, 4)] * 4


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_run_created_by_another_request_between_the_read_and_the_booking_stays_exact(acme, monkeypatch):
    # given a run of at most 2 steps, whose first batch is decided on a read that found no account of it
    subscribe(acme, max_steps=2)
    assert ingest(body("warm", "r0")) == ["accepted"]
    other: list[str] = []
    runs = _overtaken_once(monkeypatch, lambda: other.extend(ingest(body("o1", "r1"))))

    # when another request starts the run (its accounts, their allocations, one step) before it is booked
    mine = ingest(body("m1", "r1"), body("m2", "r1"))

    # then the booking does not count on the run's accounts being new: one step was left, and one is taken
    assert runs == [1] and other == ["accepted"]
    assert mine == ["accepted", "circuit_open"]
    assert run_steps(acme, "r1") == (2, 2)
