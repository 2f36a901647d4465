"""Events whose marginal cost is negative (volume pricing: the period's quantity enters a cheaper tier) are
credited back, never sent to the ledger as negative amounts; the ledger's net spend and net credits consumed
for a period add up to the rate card's price of the period's usage, rounded as docs/ledger.md ("Rounding")
says: each charge with a usage counter rounded up once at the ledger scale, per-unit charges per event."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from typing import Any

import pytest
from django.core.management import call_command
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from billing.catalog import pricing
from billing.catalog.models import Plan
from billing.catalog.money import LEDGER_SCALE
from billing.catalog.ratecard import charge_of
from billing.catalog.services import catalog_import, subscription_set
from billing.common.auth import Principal
from billing.common.calendar import period_bounds, period_key
from billing.customers.services import customer_create
from billing.guardrails import accounts as acc
from billing.guardrails.services import credits_grant
from billing.usage.services import events_ingest
from ledger.backends import get_ledger
from ledger.codes import TransferCode

pytestmark = [pytest.mark.ledger, pytest.mark.usefixtures("debit_mode")]
ADMIN = Principal(scopes=frozenset({"admin"}))
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
AT = datetime.now(timezone.utc) - timedelta(seconds=5)
CAP = D("1000000000")
_numbers = itertools.count()


def _ceil(amount: D) -> int:
    return acc.money_units_ceil(amount)


prices = st.decimals(min_value=0, max_value=D("0.5"), places=14, allow_nan=False, allow_infinity=False)
round_prices = st.decimals(min_value=0, max_value=D("0.5"), places=4, allow_nan=False, allow_infinity=False)


@st.composite
def tiers(draw: Any) -> list[dict[str, Any]]:
    bounds = sorted(set(draw(st.lists(st.integers(1, 400), min_size=1, max_size=3))))
    price = draw(st.sampled_from([prices, round_prices]))
    flat = st.sampled_from([D(0), D(0), D("0.5"), D("1.25")])
    out = [{"up_to": str(b), "unit_price": str(draw(price)), "flat_price": str(draw(flat))} for b in bounds]
    return [*out, {"up_to": None, "unit_price": str(draw(price)), "flat_price": str(draw(flat))}]


@st.composite
def charges(draw: Any) -> dict[str, Any]:
    model = draw(st.sampled_from(["volume", "volume", "graduated", "package", "per_unit", "flat_overage"]))
    if model in ("volume", "graduated"):
        return {"model": model, "tiers": draw(tiers())}
    if model == "package":
        return {"model": model, "package_size": str(draw(st.sampled_from([D(1), D(10), D("2.5"), D(100)]))),
                "package_price": str(draw(round_prices)), "free_units": str(draw(st.sampled_from([D(0), D(5)])))}
    if model == "flat_overage":
        return {"model": model, "flat_price": "3", "included": "50", "overage_unit_price": str(draw(prices))}
    return {"model": model, "unit_price": str(draw(st.sampled_from([prices, round_prices]).flatmap(lambda s: s)))}


quantities = st.one_of(st.integers(1, 300).map(D), st.decimals(min_value=D("0.001"), max_value=300, places=3,
                                                               allow_nan=False, allow_infinity=False))


def _expected(specs: list[dict[str, Any]], quantities: list[D]) -> int:
    """The rate card's price of the period's usage at the ledger scale, under docs/ledger.md's rounding."""
    total, linear = D(0), [D(s["unit_price"]) for s in specs if s["model"] == "per_unit"]
    units = 0
    for spec in specs:
        if spec["model"] != "per_unit":
            units += _ceil(pricing.price(sum(quantities, D(0)), charge_of({**spec, "meter": "m"}).spec).amount)
    for quantity in quantities:  # per-unit charges: an event's cost of them, rounded up per event
        total = sum((quantity * price for price in linear), D(0))
        units += _ceil(total)
    return units


def _subscribe(specs: list[dict[str, Any]]) -> Any:
    n = next(_numbers)
    plan = {"key": f"neg{n}", "name": f"Neg {n}", "currency": "USD", "effective_from": "2026-01-01T00:00:00Z",
            "charges": [{"meter": "llm_tokens", **spec} for spec in specs], "spend_cap": str(CAP)}
    catalog_import(text=json.dumps({"meters": [{"key": "llm_tokens", "name": "LLM tokens", "unit": "token",
                                                "aggregation": "sum"}], "plans": [plan]}), actor="t")
    customer = customer_create(external_id=f"neg-{n}", name=f"Neg {n}")
    subscription_set(customer=customer, plan=Plan.objects.get(key=f"neg{n}"), start=START,
                     now=datetime.now(timezone.utc), actor="t")
    credits_grant(customer=customer, amount=CAP, currency="USD", idempotency_key="all")
    return customer


def _body(customer: Any, event_id: str, quantity: D) -> bytes:
    return json.dumps({"event_id": event_id, "customer": customer.external_id, "meter": "llm_tokens",
                       "quantity": str(quantity), "timestamp": AT.isoformat()}).encode()


def _net(customer: Any) -> tuple[int, int, int]:
    """(net spend on the spend cap, net credits consumed, credits taken from the wallet), ledger units."""
    period = period_key(AT)
    ids = acc.Ids(customer.pk)
    found = get_ledger().lookup_accounts([ids.spend("USD", period), ids.consumed("USD", period), ids.wallet("USD")])
    spend, consumed, wallet = (found.get(ids.spend("USD", period)), found.get(ids.consumed("USD", period)),
                               found[ids.wallet("USD")])
    spent = spend.debits_posted - (spend.credits_posted - _ceil(CAP)) if spend else 0
    used = consumed.credits_posted - consumed.debits_posted if consumed else 0
    return spent, used, _ceil(CAP) - wallet.balance


@pytest.mark.django_db
@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(charges(), min_size=1, max_size=3), events=st.lists(quantities, min_size=1, max_size=12),
       data=st.data())
def test_the_ledgers_net_spend_and_credits_are_the_rate_cards_price_of_the_usage(debit_mode, specs, events, data):
    # given a rate card of random charges on one meter (volume tiers, whose cheaper tiers make some events'
    # marginal cost negative, mixed with others), a spend cap and credits that never refuse
    customer = _subscribe(specs)

    # when random events are ingested in random batches
    cuts = sorted({*data.draw(st.lists(st.integers(1, len(events)), max_size=3)), len(events)})
    start = 0
    for cut in cuts:
        batch = [_body(customer, f"e{i}", q) for i, q in enumerate(events[start:cut], start)]
        results = events_ingest(principal=ADMIN, raw_events=batch)
        assert [r.status for r in results] == ["accepted"] * len(batch), [r.error for r in results]
        start = cut

    # then the net spend, the net credits consumed and what the wallet gave are the rate card's price
    expected = _expected(specs, events)
    assert _net(customer) == (expected, expected, expected)


@pytest.mark.django_db
def test_an_event_into_a_cheaper_volume_tier_is_credited_back_and_never_refused(debit_mode):
    # given volume pricing (100 at 0.01 = 1.00; 101 at 0.005 = 0.505), and a spend cap already used up
    # to what the first tier cost
    specs = [{"model": "volume", "tiers": [{"up_to": "100", "unit_price": "0.01"},
                                           {"up_to": None, "unit_price": "0.005"}]}]
    customer = _subscribe(specs)
    first = events_ingest(principal=ADMIN, raw_events=[_body(customer, "a", D(100))])

    # when the next event takes the period into the cheaper tier, then more usage follows in the same batch
    second = events_ingest(principal=ADMIN, raw_events=[_body(customer, "b", D(1)), _body(customer, "c", D(10))])

    # then every event is accepted, and the period's net spend and credits are the price of 111 units
    assert [r.status for r in first + second] == ["accepted"] * 3
    assert _net(customer) == (_ceil(D("0.555")),) * 3
    # and no transfer's amount is negative: the give-back is a refund transfer to the customer's accounts
    period = period_key(AT)
    ids = acc.Ids(customer.pk)
    history = get_ledger().account_transfers(ids.spend("USD", period), limit=50)
    refunds = [t for t in history if t.code == TransferCode.USAGE_SPEND_REFUND]
    assert refunds and all(t.credit_account_id == ids.spend("USD", period) for t in refunds)
    assert all(t.amount >= 0 for t in history)


@pytest.mark.django_db
def test_spent_figures_net_the_credit_backs(debit_mode):
    # given volume pricing and a period whose usage crossed into a cheaper tier
    from billing.guardrails.selectors import customer_balance
    from billing.invoicing.compute import credits_consumed

    specs = [{"model": "volume", "tiers": [{"up_to": "100", "unit_price": "0.01"},
                                           {"up_to": None, "unit_price": "0.005"}]}]
    customer = _subscribe(specs)
    events_ingest(principal=ADMIN, raw_events=[_body(customer, "a", D(90))])
    events_ingest(principal=ADMIN, raw_events=[_body(customer, "b", D(30))])

    # then the balance's spend and the invoice's credits are the price of 120 units (0.60), not 0.90 + 0
    balance = customer_balance(customer=customer, now=AT)
    assert D(balance["spend_cap"]["spent"]) == D("0.6")
    start, _end = period_bounds(AT)
    assert credits_consumed(customer=customer, currency="USD", start=start) == _ceil(D("0.6"))
    assert D(balance["credits"][0]["posted"]) == CAP - D("0.6")


@pytest.mark.django_db
def test_a_batch_whose_credit_back_comes_before_more_usage_books_its_peak(debit_mode):
    # given volume pricing and a spend cap of 1.00 (100 at 0.01 = 1.00; past 100 every unit costs 0.001)
    from ledger.types import AccountFlags

    spec = {"model": "volume", "tiers": [{"up_to": "100", "unit_price": "0.01"}, {"up_to": None, "unit_price": "0.001"}]}
    customer = _subscribe([spec])
    period = period_key(AT)
    ids = acc.Ids(customer.pk)

    # when one batch takes 1.00, gives 0.899 back (101 units: 0.101), then takes 0.05 more (150: 0.15)
    results = events_ingest(principal=ADMIN, raw_events=[_body(customer, "a", D(100)), _body(customer, "b", D(1)),
                                                         _body(customer, "c", D(49))])

    # then all are accepted, and the spend account's net is 0.15
    assert [r.status for r in results] == ["accepted"] * 3
    assert _net(customer) == (_ceil(D("0.15")),) * 3
    spend = get_ledger().lookup_accounts([ids.spend("USD", period)])[ids.spend("USD", period)]
    assert spend.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS


@pytest.mark.django_db
def test_a_negative_cost_event_is_never_refused_for_spend_even_at_the_cap(debit_mode):
    # given volume pricing and a spend cap the first tier's price fills exactly
    n = next(_numbers)
    plan = {"key": f"neg{n}", "name": "Capped", "currency": "USD", "effective_from": "2026-01-01T00:00:00Z",
            "charges": [{"meter": "llm_tokens", "model": "volume",
                         "tiers": [{"up_to": "100", "unit_price": "0.01"}, {"up_to": None, "unit_price": "0.005"}]}],
            "spend_cap": "1.00"}
    catalog_import(text=json.dumps({"meters": [{"key": "llm_tokens", "name": "LLM tokens", "unit": "token",
                                                "aggregation": "sum"}], "plans": [plan]}), actor="t")
    customer = customer_create(external_id=f"neg-{n}", name="Capped")
    subscription_set(customer=customer, plan=Plan.objects.get(key=f"neg{n}"), start=START,
                     now=datetime.now(timezone.utc), actor="t")
    assert [r.status for r in events_ingest(principal=ADMIN, raw_events=[_body(customer, "a", D(100))])] == ["accepted"]
    over = events_ingest(principal=ADMIN, raw_events=[_body(customer, "x", D("0.5"))])  # 100.5 at 0.005 = 0.5025
    assert [r.status for r in over] == ["accepted"]  # it lowers the period's price: given back

    # when more events follow, then they fit in what the credit-back freed, and no more
    more = events_ingest(principal=ADMIN, raw_events=[_body(customer, "b", D(99)), _body(customer, "c", D(1))])
    assert [r.status for r in more] == ["accepted", "rejected"]  # 199.5 * 0.005 = 0.9975; 200.5: 1.0025 > 1.00


@pytest.mark.django_db(transaction=True)
def test_seed_demo_runs_clean() -> None:
    # given an empty database, when the demo is seeded (a volume charge whose usage crosses its cheaper
    # tier), then it ingests every event
    from billing.usage.models import UsageEvent

    call_command("seed_demo", "--events", "500", "--json")
    assert UsageEvent.objects.filter(event_id__startswith="demo-").count() == 500
    assert not UsageEvent.objects.filter(event_id__startswith="demo-", billable=False).exists()


def test_the_rounding_rule_telescopes() -> None:
    # ceil(F(after)) - ceil(F(before)) per event adds up to ceil(F(period)) whatever the steps
    terms = charge_of({"meter": "m", "model": "volume", "tiers": [
        {"up_to": "10", "unit_price": "0.0000000000003"}, {"up_to": None, "unit_price": "0.0000000000001"}]})
    spec = terms.spec
    from billing.guardrails.limits.charges import Charge, fast_terms

    charge = Charge(0, terms, None, spec, 1, None, fast=fast_terms(spec))
    before, total = 0, 0
    for step in (D("3.3"), D("4"), D("3"), D("0.7"), D(20)):
        total += charge.ledger_units(before, step)
        before += acc.qty_units(step)
    assert total == _ceil(pricing.price(D(31), spec).amount) == int(
        (D(31) * D("0.0000000000001")).scaleb(LEDGER_SCALE).to_integral_value(rounding="ROUND_CEILING"))
