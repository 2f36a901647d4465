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
from billing.guardrails.models import Reservation
from billing.usage.models import UsageEvent
from ledger.backends import get_ledger
from ledger.models import LedgerTransfer
from tests.portal import test_gateway as gateway

fake = gateway.fake  # the fake upstream

pytestmark = [pytest.mark.ledger, pytest.mark.django_db(transaction=True)]

# The statements of one call, the SQL ledger's periodic sweep of expired holds left out (a write runs it
# at most every 0.1 s): authenticate 1, the guard state and plans 2, the reservation's hold (the account
# read; in its transaction the accounts locked and updated) and its row (one autocommitted INSERT), the
# settling events' customer, then one transaction closing the hold (a savepoint: the pending hold and the
# accounts locked, the balances and the hold's state in one UPDATE), the careful pass's locks and the lock
# timeout around the insert (the events fit in the posted hold: no booking); last the reservation's state.
# The raw psycopg statements (the new transfers' COPY, the events' insert) are not captured. SQLite runs
# each write in a BEGIN IMMEDIATE transaction of its own, reads ids PostgreSQL does not, and writes an
# event's idempotency key in an insert of its own. Before the hold's state went into the balances' UPDATE,
# the reservation's row into autocommit and a fresh reservation's hold ids were no longer looked up first:
# 28 on PostgreSQL, 33 on SQLite. Exact, so that a change that saves one updates it, and one that adds one
# says why.
# On TigerBeetle the ledger's part is no SQL at all.
STATEMENTS = {("postgresql", "sql"): 23, ("sqlite", "sql"): 29, ("postgresql", "tigerbeetle"): 8,
              ("sqlite", "tigerbeetle"): 11}


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
    statements = [q["sql"] for q in queries.captured_queries if not _sweep(q["sql"])]
    backend = "sql" if get_ledger().shares_database else "tigerbeetle"
    assert len(statements) == STATEMENTS[connection.vendor, backend], "\n".join(statements)
    assert not [s for s in statements if 'FROM "catalog_meter"' in s]  # the meter: once per process
    assert not [s for s in statements if s.startswith('SELECT "customers_customer"."external_id"')]
    assert UsageEvent.objects.count() == 4  # and the calls were billed: two events each
    assert set(Reservation.objects.values_list("state", flat=True)) == {Reservation.State.SETTLED}
    assert not LedgerTransfer.objects.filter(state=LedgerTransfer.State.PENDING).exists()  # every hold closed


def _sweep(sql: str) -> bool:
    return sql.startswith("SELECT id FROM ledger_transfer WHERE state = ") and "expires_at <=" in sql
