"""What one gateway call costs the database: the statements of a whole (non-streamed) chat completion, with
the process's caches warm (the gateway meter, the key's customer). A bound that fails when a change adds
round trips to the hot path."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from billing.customers.services import api_key_create
from billing.usage.models import UsageEvent
from tests.portal import test_gateway as gateway

fake = gateway.fake  # the fake upstream

pytestmark = [pytest.mark.ledger, pytest.mark.django_db(transaction=True)]

# authenticate 1, the guard state and plans 3, the reservation's holds and its row, the settling events'
# ingest (lookups, the ledger's post/void and debit, the rows) and the reservation's state; SQLite's
# BEGIN IMMEDIATE / COMMIT pairs are counted too (PostgreSQL's BEGIN is implicit), and the SQL ledger's sweep of
# expired holds, which a write runs now and then (35 and 36 before the meter and customer were kept); on
# SQLite an event's idempotency key is one more insert (PostgreSQL writes it in the events' statement)
MAX_STATEMENTS = {"postgresql": 33, "sqlite": 34}


def test_a_gateway_call_runs_a_bounded_number_of_statements_and_no_lookup_the_process_keeps(acme: Any, fake: Any) -> None:
    gateway.subscribe(acme)
    _, raw = api_key_create(name="app", scope="gateway", customer=acme)
    browser = Client()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100}
    for _ in range(2):  # the first call fills the process's caches
        with CaptureQueriesContext(connection) as queries:
            answer = browser.post("/gateway/v1/chat/completions", body, content_type="application/json",
                                  HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert answer.status_code == 200, answer.content
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) <= MAX_STATEMENTS[connection.vendor], "\n".join(statements)
    assert not [s for s in statements if 'FROM "catalog_meter"' in s]  # the meter: once per process
    assert not [s for s in statements if s.startswith('SELECT "customers_customer"."external_id"')]
    assert UsageEvent.objects.count() == 4  # and the calls were billed: two events each
