"""The open period's bill: lines per charge, tiers, versions on both sides of a change, exact totals."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.catalog import money
from billing.catalog.models import Plan
from billing.catalog.services import catalog_import, subscription_set
from billing.common.auth import Principal
from billing.invoicing.compute import upcoming_invoice
from tests import factories

pytestmark = pytest.mark.django_db
ADMIN = Principal(scopes=frozenset({"admin"}))
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
  - {key: api_calls, name: API calls, unit: call, aggregation: count}
plans:
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2026-01-01T00:00:00Z"
    base_fee: "99.00"
    charges:
      - meter: llm_tokens
        filter: {model: gpt-4o}
        model: graduated
        tiers:
          - {up_to: 1000, unit_price: "0.01"}
          - {up_to: null, unit_price: "0.001", flat_price: "2"}
      - meter: llm_tokens
        filter: {model: claude}
        model: per_unit
        unit_price: "0.0000000123"
      - {meter: api_calls, model: package, package_size: 100, package_price: "1.00"}
"""


def _invoice(customer) -> dict:
    estimate = upcoming_invoice(customer=customer, now=NOW)
    assert estimate is not None
    return estimate.as_dict()


def send(*events: dict, now: datetime = NOW) -> None:
    factories.send(*events, now=now)


def ev(event_id: str, at: datetime, quantity: str, meter: str = "llm_tokens", **dims: str) -> dict:
    return factories.event(event_id, at, quantity, meter, dimensions=dims)


@pytest.fixture
def subscribed(acme):
    catalog_import(text=CATALOG, actor="t")
    subscription_set(customer=acme, plan=Plan.objects.get(key="pro"), start=datetime(2026, 1, 1, tzinfo=timezone.utc),
                     now=NOW, actor="t")
    return acme


def test_lines_per_charge_with_tier_and_next_tier(subscribed):
    day = datetime(2026, 11, 10, tzinfo=timezone.utc)
    send(ev("a", day, "1500", model="gpt-4o"), ev("b", day, "1000000000000", model="claude"),
         ev("c", day, "999", model="other"),  # matches no charge: not billed
         *[{"event_id": f"call-{i}", "customer": "acme-co", "meter": "api_calls", "timestamp": day.isoformat()}
           for i in range(101)],
         ev("old", datetime(2026, 10, 31, 23, 59, 59, 999999, tzinfo=timezone.utc), "500", model="gpt-4o"))

    invoice = _invoice(subscribed)

    assert invoice["period"] == {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}
    lines = {(line["meter"], json.dumps(line["filter"])): line for line in invoice["lines"] if line["kind"] == "charge"}
    gpt = lines[("llm_tokens", '{"model": "gpt-4o"}')]
    assert (gpt["quantity"], gpt["amount"], gpt["tier"], gpt["next_tier"]) == ("1500", "12.50", 2, None)
    claude = lines[("llm_tokens", '{"model": "claude"}')]
    assert (claude["quantity"], claude["amount"]) == ("1000000000000", "12300.00")
    calls = lines[("api_calls", "null")]
    assert (calls["quantity"], calls["amount"]) == ("101", "2.00")
    assert invoice["lines"][0] == {**invoice["lines"][0], "kind": "base_fee", "amount": "99.00"}
    assert invoice["subtotal"] == "12413.50" and invoice["total_minor"] == 1241350
    assert invoice["currency"] == "USD"


def test_first_tier_shows_the_next_threshold(subscribed):
    send(ev("a", datetime(2026, 11, 2, tzinfo=timezone.utc), "10", model="gpt-4o"))

    gpt = next(line for line in _invoice(subscribed)["lines"]
               if line.get("filter") == {"model": "gpt-4o"})

    assert gpt["tier"] == 1
    assert gpt["next_tier"] == {"starts_above": "1000", "unit_price": "0.001"}


def test_events_on_both_sides_of_a_version_change_are_priced_by_their_own_version(subscribed):
    catalog_import(text=CATALOG.replace('effective_from: "2026-01-01T00:00:00Z"', 'effective_from: "2026-11-15T00:00:00Z"')
                   .replace('unit_price: "0.0000000123"', 'unit_price: "0.0000000246"'), actor="t")
    before = datetime(2026, 11, 14, 23, 59, 59, 999999, tzinfo=timezone.utc)
    after = datetime(2026, 11, 15, tzinfo=timezone.utc)
    send(ev("old", before, "1000000000", model="claude"), ev("new", after, "1000000000", model="claude"))

    claude = next(line for line in _invoice(subscribed)["lines"]
                  if line.get("filter") == {"model": "claude"})

    assert claude["amount"] == str(Decimal("12.30") + Decimal("24.60"))
    assert claude["versions"] == [1, 2]


def test_tiers_stay_cumulative_across_a_version_change(subscribed):
    catalog_import(text=CATALOG.replace('effective_from: "2026-01-01T00:00:00Z"', 'effective_from: "2026-11-15T00:00:00Z"')
                   .replace('unit_price: "0.001", flat_price: "2"', 'unit_price: "0.002", flat_price: "2"'), actor="t")
    send(ev("old", datetime(2026, 11, 5, tzinfo=timezone.utc), "800", model="gpt-4o"),
         ev("new", datetime(2026, 11, 20, tzinfo=timezone.utc), "700", model="gpt-4o"))

    gpt = next(line for line in _invoice(subscribed)["lines"]
               if line.get("filter") == {"model": "gpt-4o"})

    # v1: 800 x 0.01 = 8; v2 marginal from 800 to 1500: 200 x 0.01 + 500 x 0.002 + 2 = 5
    assert gpt["amount"] == "13.00"


def test_no_subscription_means_no_upcoming_invoice(acme):
    assert upcoming_invoice(customer=acme, now=NOW) is None


def test_upcoming_invoice_api_and_tenancy(subscribed, make_client, globex):
    now = datetime.now(timezone.utc)
    send(ev("recent", now - timedelta(seconds=30), "10", model="gpt-4o"), now=now)

    own = make_client("read", customer=subscribed).get("/api/v1/customers/acme-co/upcoming-invoice")
    foreign = make_client("read", customer=globex).get("/api/v1/customers/acme-co/upcoming-invoice")
    none = make_client("read").get("/api/v1/customers/globex/upcoming-invoice")

    assert own.status_code == 200
    assert any(line.get("quantity") == "10" for line in own.json()["lines"])
    assert foreign.status_code == 404
    assert none.status_code == 404 and none.json()["error"]["code"] == "no_subscription"


amounts = st.lists(st.integers(min_value=1, max_value=10**7), min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(quantities=amounts)
def test_total_equals_the_sum_of_rounded_lines(subscribed, quantities):
    tag = str(len(quantities)) + "-" + "-".join(map(str, quantities))
    day = datetime(2026, 11, 3, tzinfo=timezone.utc)
    send(*[ev(f"{tag}-{i}", day, str(q), model=("gpt-4o", "claude")[i % 2]) for i, q in enumerate(quantities)])

    invoice = _invoice(subscribed)

    assert invoice["total_minor"] == sum(line["amount_minor"] for line in invoice["lines"])
    assert Decimal(invoice["total"]) == sum(Decimal(line["amount"]) for line in invoice["lines"])
    for line in invoice["lines"]:
        assert money.from_minor(line["amount_minor"], "USD") == Decimal(line["amount"])


@pytest.mark.ledger
def test_the_upcoming_invoice_totals_what_finalization_will_with_tax_credits_and_a_correction(subscribed):
    from billing.common.fields import decimal_to_text
    from billing.guardrails.services import credits_grant
    from billing.invoicing import services
    from billing.invoicing.models import Invoice
    from billing.usage.rollups import rollup_until_current

    # given: a 19% tax rate, 50.00 of prepaid credits the usage draws on, and a correction: 1505 gpt-4o tokens
    # cost 12.505 -> 12.51, corrected by -3 the line stays 12.51 and the correction is -0.003 -> -0.00
    # (priced as one line the usage would be 12.502 -> 12.50: a cent apart)
    subscribed.tax_rate = Decimal("19")
    subscribed.save()
    credits_grant(customer=subscribed, amount=Decimal("50.00"), currency="USD", idempotency_key="prepaid")
    day = datetime(2026, 11, 10, tzinfo=timezone.utc)
    send(ev("a", day, "1505", model="gpt-4o"), ev("b", day, "333333333", model="claude"), now=day + timedelta(hours=1))
    send(factories.event("fix-a", day + timedelta(days=1), "-3", dimensions={"model": "gpt-4o"}, corrects="a"),
         now=day + timedelta(days=1, hours=1))

    # when: the customer looks at the upcoming invoice, and later the period is closed and finalized
    upcoming = upcoming_invoice(customer=subscribed, now=NOW)
    assert upcoming is not None
    body = upcoming.as_dict()
    services.periods_close(now=datetime(2026, 12, 1, 1, tzinfo=timezone.utc))
    rollup_until_current(now=datetime(2026, 12, 2, tzinfo=timezone.utc))
    services.periods_finalize(now=datetime(2026, 12, 2, tzinfo=timezone.utc))
    invoice = Invoice.objects.get(customer=subscribed, period_start=datetime(2026, 11, 1, tzinfo=timezone.utc),
                                  kind="invoice")

    # then: the estimate was the invoice, figure for figure and line for line
    assert invoice.status == "finalized"
    assert invoice.credits_minor > 0 and invoice.tax_minor and invoice.tax_minor > 0
    figures = ("subtotal_minor", "credits_minor", "tax_minor", "total_minor")
    assert {name: body[name] for name in figures} == {name: getattr(invoice, name) for name in figures}
    assert body["total"] == str(money.from_minor(invoice.total_minor, "USD"))
    assert body["tax_rate"] == "19" and body["tax_note"] is None
    assert [(line["kind"], line["description"], line["quantity"], line["amount_minor"]) for line in body["lines"]] == [
        (line.kind, line.description, decimal_to_text(line.quantity), line.amount_minor)
        for line in invoice.lines.order_by("position")]
    assert [line["amount_minor"] for line in body["lines"] if line["meter"] == "llm_tokens"
            and line["filter"] == {"model": "gpt-4o"}] == [1251, 0]


@pytest.mark.ledger
def test_the_upcoming_invoice_api_shows_credits_and_tax(subscribed, make_client):
    from billing.guardrails.services import credits_grant

    subscribed.tax_rate = Decimal("20")
    subscribed.save()
    credits_grant(customer=subscribed, amount=Decimal("5.00"), currency="USD", idempotency_key="prepaid")
    now = datetime.now(timezone.utc)
    factories.send(ev("a", now - timedelta(seconds=5), "100", model="gpt-4o"), now=now)

    body = make_client("read", customer=subscribed).get("/api/v1/customers/acme-co/upcoming-invoice").json()

    # 99 base + 100 x 0.01 = 100.00; the tokens drew 1.00 of credits; 20% of 99.00 = 19.80
    assert (body["subtotal"], body["credits"], body["tax"], body["tax_rate"], body["total"]) == (
        "100.00", "1.00", "19.80", "20", "118.80")
    assert body["total_minor"] == body["subtotal_minor"] - body["credits_minor"] + body["tax_minor"] == 11880
