"""The beat's refresh of every draft reads what the bills of a period share once (a ``PeriodSnapshot``):
the drafts it writes are the ones a customer-by-customer read computes, and the shared reads do not grow
with the number of customers."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.catalog.models import Plan
from billing.catalog.services import catalog_import, subscription_set
from billing.common.auth import Principal
from billing.customers.services import customer_create
from billing.guardrails.services import credits_grant
from billing.invoicing import services
from billing.invoicing.compute import invoice_compute
from billing.invoicing.models import Invoice
from billing.invoicing.snapshot import period_snapshot
from billing.usage.rollups import rollup_until_current
from billing.usage.services import events_ingest
from ledger.backends import get_ledger

pytestmark = pytest.mark.ledger
UTC = timezone.utc
OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
ADMIN = Principal(scopes=frozenset({"admin"}))
# Pro's prices change on 15 October at 12:30; Team is another plan (a customer moves to it mid-period)
CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
  - {key: agents, name: Agents, unit: agent, aggregation: unique_count, unique_by: agent}
plans:
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2024-01-01T00:00:00Z"
    base_fee: "10.00"
    charges:
      - meter: llm_tokens
        model: graduated
        tiers:
          - {up_to: 1000, unit_price: "0.01"}
          - {up_to: null, unit_price: "0.001"}
      - {meter: agents, model: per_unit, unit_price: "1.10"}
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2026-10-15T12:30:00Z"
    base_fee: "10.00"
    charges:
      - {meter: llm_tokens, model: per_unit, unit_price: "0.02"}
      - {meter: agents, model: per_unit, unit_price: "1.20"}
  - key: team
    name: Team
    currency: USD
    effective_from: "2024-01-01T00:00:00Z"
    base_fee: "30.00"
    charges:
      - {meter: llm_tokens, model: per_unit, unit_price: "0.002"}
"""
SHARED_TABLES = ("catalog_meter", "catalog_subscription", "catalog_ratecardversion", "customers_customer")


def _usage(customers: list[Any]) -> None:
    events = []
    for n, customer in enumerate(customers):
        for day in (3, 15, 20):
            at = datetime(2026, 10, day, 12, 45, tzinfo=UTC)
            events += [{"event_id": f"t-{n}-{day}", "customer": customer.external_id, "meter": "llm_tokens",
                        "quantity": str(400 + 100 * n), "timestamp": at.isoformat()},
                       {"event_id": f"a-{n}-{day}", "customer": customer.external_id, "meter": "agents",
                        "quantity": "1", "timestamp": at.isoformat(), "dimensions": {"agent": f"agent-{day % 7}"}}]
    results = events_ingest(principal=ADMIN, raw_events=[json.dumps(e).encode() for e in events],
                            now=datetime(2026, 10, 20, 13, tzinfo=UTC))
    refused = [r.as_dict() for r in results if r.as_dict()["status"] != "accepted"]
    assert not refused, refused


def _customers(count: int) -> list[Any]:
    catalog_import(text=CATALOG, actor="t")
    pro, team = Plan.objects.get(key="pro"), Plan.objects.get(key="team")
    customers = [customer_create(external_id=f"c{n}", name=f"C{n}") for n in range(count)]
    for customer in customers:
        subscription_set(customer=customer, plan=pro, start=OCT, now=OCT, actor="t")
    # the first customer moves to Team mid-period: two subscriptions, each priced by its own plan
    switch = datetime(2026, 10, 18, tzinfo=UTC)
    subscription_set(customer=customers[0], plan=team, start=switch, now=switch, actor="t")
    # the second has prepaid credits, which its usage draws on at ingest: the only wallet
    credits_grant(customer=customers[1], amount=Decimal("100.00"), currency="USD", idempotency_key="prepaid")
    return customers


@pytest.mark.django_db
def test_a_snapshot_prices_every_customer_as_a_read_of_its_own() -> None:
    customers = _customers(3)
    _usage(customers)
    rollup_until_current(now=datetime(2026, 10, 20, 14, tzinfo=UTC))
    snapshot = period_snapshot(start=OCT, end=NOV)
    assert [c.pk for c in snapshot.customers] == [c.pk for c in customers]
    assert [s.plan.key for s in snapshot.subscriptions[customers[0].pk]] == ["pro", "team"]
    for customer in customers:
        alone = invoice_compute(customer=customer, start=OCT, end=NOV)
        shared = invoice_compute(customer=customer, start=OCT, end=NOV, snapshot=snapshot)
        assert alone is not None and shared is not None
        assert shared.digest() == alone.digest() and shared.total_minor == alone.total_minor > 0
        assert shared.versions == alone.versions == [1, 2]  # Pro's two versions, both used
        assert shared.credits_minor == alone.credits_minor and (shared.credits_minor > 0) == (customer == customers[1])
    with pytest.raises(ValueError, match="cannot refresh"):
        services.invoice_draft_refresh(customer=customers[1], period_start=NOV, snapshot=snapshot)


@pytest.mark.django_db
def test_the_beats_refresh_reads_the_shared_catalog_once_per_period_whatever_the_customers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ledger_calls: list[str] = []  # whichever ledger backend is configured
    backend = type(get_ledger())
    def spy(name: str) -> Any:
        real = getattr(backend, name)

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            ledger_calls.append(name)
            return real(self, *args, **kwargs)
        return call
    for name in ("lookup_accounts", "account_transfers"):
        monkeypatch.setattr(backend, name, spy(name))
    customers = _customers(4)
    _usage(customers)
    rollup_until_current(now=datetime(2026, 10, 20, 14, tzinfo=UTC))
    expected = {}  # each customer's bill read on its own: what the batch must write
    for customer in customers:
        computed = invoice_compute(customer=customer, start=OCT, end=NOV)
        assert computed is not None
        expected[customer.pk] = (computed.digest(), computed.total_minor)

    for run in ("creates", "finds nothing new"):
        ledger_calls.clear()
        with CaptureQueriesContext(connection) as queries:
            assert services.drafts_refresh(now=datetime(2026, 10, 20, 15, tzinfo=UTC)) == 4
        reads = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")]
        shared = {table: sum(bool(re.search(rf'\bFROM "?{table}"?\b', sql)) for sql in reads) for table in SHARED_TABLES}
        assert shared == dict.fromkeys(SHARED_TABLES, 1), (run, shared)
        # one lookup of every wallet and credits-consumed account; no transfers read
        assert sorted(ledger_calls) == ["lookup_accounts"], (run, ledger_calls)
        got = {i.customer_id: (i.lines_digest, i.total_minor) for i in Invoice.objects.filter(period_start=OCT)}
        assert got == expected, run
