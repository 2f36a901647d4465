"""Deterministic replay: every finalized invoice recomputed from raw events alone matches to the cent,
whatever the workload; and the check is not vacuous (a drifted rollup is caught)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.catalog.services import catalog_import
from billing.common.auth import Principal
from billing.customers.models import Customer
from billing.invoicing import periods, services
from billing.invoicing.models import Invoice
from billing.invoicing.selectors import invoice_verify
from billing.usage.models import DailyRollup, HourlyRollup
from billing.usage.rollups import rollup_until_current
from billing.usage.services import events_ingest

ADMIN = Principal(scopes=frozenset({"admin"}))
UTC = timezone.utc
START = datetime(2026, 9, 1, tzinfo=UTC)
CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
  - {key: api_calls, name: API calls, unit: call, aggregation: count}
  - {key: seats, name: Seats, unit: seat, aggregation: max}
  - {key: agents, name: Agents, unit: agent, aggregation: unique_count, unique_by: agent}
plans:
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2026-01-01T00:00:00Z"
    base_fee: "9.99"
    charges:
      - meter: llm_tokens
        model: graduated
        markup: {dimension: model, percent: {gpt-4o: "20"}, default: "0"}
        tiers:
          - {up_to: 1000, unit_price: "0.0013"}
          - {up_to: 5000, unit_price: "0.00071", flat_price: "0.5"}
          - {up_to: null, unit_price: "0.000333"}
      - {meter: api_calls, model: package, package_size: 7, package_price: "0.33", free_units: 3}
      - {meter: seats, model: volume, tiers: [{up_to: 5, unit_price: "3"}, {up_to: null, unit_price: "2.5"}]}
      - {meter: agents, model: per_unit, unit_price: "1.1"}
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2026-10-15T12:30:00Z"
    base_fee: "9.99"
    charges:
      - meter: llm_tokens
        model: volume
        tiers:
          - {up_to: 2000, unit_price: "0.0011"}
          - {up_to: null, unit_price: "0.0007"}
      - {meter: api_calls, model: flat_overage, flat_price: "1", included: 10, overage_unit_price: "0.07"}
      - {meter: seats, model: per_unit, unit_price: "2.75"}
      - {meter: agents, model: per_unit, unit_price: "1.2"}
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2026-11-10T00:00:00Z"
    base_fee: "9.99"
    charges:
      - meter: llm_tokens
        model: graduated
        tiers:
          - {up_to: 3000, unit_price: "0.0017"}
          - {up_to: null, unit_price: "0.0009"}
      - {meter: api_calls, model: per_unit, unit_price: "0.01"}
      - {meter: seats, model: per_unit, unit_price: "2.75"}
      - {meter: agents, model: per_unit, unit_price: "1.2"}
"""

CUT_HOUR = (44 * 24 + 12) * 60  # minutes from START to 2026-10-15T12:00Z (v2 takes effect at 12:30)
event = st.fixed_dictionaries({
    "customer": st.sampled_from(["acme-co", "globex"]),
    "meter": st.sampled_from(["llm_tokens", "api_calls", "seats", "agents"]),
    "minute": st.one_of(  # Sep..Nov, with weight on the hour the rate card changes in and the month edges
        st.integers(min_value=0, max_value=91 * 24 * 60 - 1),
        st.integers(min_value=CUT_HOUR, max_value=CUT_HOUR + 59),
        st.sampled_from([30 * 24 * 60 - 1, 30 * 24 * 60, 61 * 24 * 60 - 1, 61 * 24 * 60,  # month edges
                         70 * 24 * 60 - 1, 70 * 24 * 60])),  # around v3, on the hour (2026-11-10T00:00Z)
    "quantity": st.integers(min_value=0, max_value=4000),
    "model": st.sampled_from(["gpt-4o", "claude", "mini"]),
    "agent": st.sampled_from(["a1", "a2", "a3"]),
    "correct": st.integers(min_value=-1500, max_value=0),
    "rollup_after": st.booleans(),
})


def _body(index: int, spec: dict[str, Any], at: datetime) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": f"e{index}", "customer": spec["customer"], "meter": spec["meter"],
                            "timestamp": at.isoformat(), "dimensions": {"model": spec["model"], "agent": spec["agent"]}}
    if spec["meter"] != "api_calls" or spec["quantity"] % 2:
        body["quantity"] = str(spec["quantity"] if spec["meter"] != "api_calls" else spec["quantity"] % 5)
    return body


@pytest.mark.django_db
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(workload=st.lists(event, min_size=1, max_size=40))
def test_invoice_verify_all_passes_after_a_randomized_workload(acme: Any, globex: Any, workload: list[dict[str, Any]]) -> None:
    from billing.catalog.models import Plan
    from billing.catalog.services import subscription_set
    from billing.usage.ingest import resolve as usage_resolve

    with transaction.atomic():  # each example rolls back, so the process caches of its meters must go too
        periods.forget_cache()
        usage_resolve.METERS.clear()
        catalog_import(text=CATALOG, actor="t")
        for customer in Customer.objects.all():
            subscription_set(customer=customer, plan=Plan.objects.get(key="pro"), start=START, now=START, actor="t")
        ordered = sorted(enumerate(workload), key=lambda item: item[1]["minute"])
        for index, spec in ordered:
            at = START + timedelta(minutes=spec["minute"])
            sent = events_ingest(principal=ADMIN, raw_events=[json.dumps(_body(index, spec, at)).encode()],
                                 now=at + timedelta(seconds=1))
            assert sent[0].status == "accepted", sent[0].as_dict()
            if spec["meter"] in ("llm_tokens", "api_calls") and spec["correct"] and spec["quantity"]:
                fix = {"event_id": f"fix{index}", "customer": spec["customer"], "meter": spec["meter"],
                       "quantity": str(max(spec["correct"], -spec["quantity"])), "corrects": f"e{index}",
                       "timestamp": (at + timedelta(minutes=5)).isoformat(),
                       "dimensions": {"model": spec["model"], "agent": spec["agent"]}}
                events_ingest(principal=ADMIN, raw_events=[json.dumps(fix).encode()], now=at + timedelta(minutes=6))
            if spec["rollup_after"]:
                rollup_until_current(now=at + timedelta(hours=1))
            # close periods as time passes (grace one hour), like beat would
            for start, end in periods.closable_period_ends(now=at, first_start=START):
                periods.period_close(start=start, end=end, now=at)
        services.periods_close(now=datetime(2026, 12, 2, tzinfo=UTC))
        rollup_until_current(now=datetime(2026, 12, 2, tzinfo=UTC))
        finalized = services.periods_finalize(now=datetime(2026, 12, 3, tzinfo=UTC))
        assert len(finalized) == 6  # two customers, three months
        call_command("invoice", "verify", "--all")
        transaction.set_rollback(True)


@pytest.mark.django_db
def test_verify_catches_an_invoice_computed_from_drifted_rollups(acme: Any) -> None:
    from billing.catalog.models import Plan
    from billing.catalog.services import subscription_set

    catalog_import(text=CATALOG, actor="t")
    subscription_set(customer=acme, plan=Plan.objects.get(key="pro"), start=START, now=START, actor="t")
    at = datetime(2026, 9, 10, 10, tzinfo=UTC)
    body = {"event_id": "x", "customer": "acme-co", "meter": "llm_tokens", "quantity": "2500", "timestamp": at.isoformat()}
    assert events_ingest(principal=ADMIN, raw_events=[json.dumps(body).encode()], now=at)[0].status == "accepted"
    rollup_until_current(now=at + timedelta(hours=1))
    for rollups_of in (HourlyRollup, DailyRollup):  # drift: the rollups lost 100 tokens
        rollups_of.objects.filter(customer=acme).update(total=2400)
    services.periods_close(now=datetime(2026, 10, 1, 1, tzinfo=UTC))
    services.periods_finalize(now=datetime(2026, 10, 2, tzinfo=UTC))
    invoice = Invoice.objects.get(customer=acme, period_start=START)
    problems = invoice_verify(invoice=invoice)
    assert problems and "raw events give" in problems[0]
    with pytest.raises(CommandError):
        call_command("invoice", "verify", invoice.number)
