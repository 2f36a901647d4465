"""Limited ingest prices each event in integers when the terms allow it (billing.guardrails.limits.charges.priced_units); it must
give exactly the ledger amount the exact Decimal path gives, rounding up included."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given
from hypothesis import strategies as st

from billing.catalog import ratecard
from billing.catalog.pricing import ChargeSpec, Tier
from billing.guardrails import accounts as acc
from billing.guardrails.limits import EventUsage
from billing.guardrails.limits.charges import Charge, fast_terms, priced, priced_units

prices = st.decimals(min_value=0, max_value=100, places=14, allow_nan=False, allow_infinity=False)
quantities = st.decimals(min_value=D("0.000000000000000001"), max_value=10**9, places=18, allow_nan=False,
                         allow_infinity=False)
befores = st.decimals(min_value=0, max_value=2 * 10**9, places=6, allow_nan=False, allow_infinity=False)


@st.composite
def specs(draw):
    if draw(st.booleans()):
        return ChargeSpec("per_unit", unit_price=draw(prices))
    bounds = sorted(set(draw(st.lists(st.integers(1, 10**9), min_size=0, max_size=4))))
    tiers = [Tier(D(b), draw(prices), draw(prices)) for b in bounds]
    return ChargeSpec("graduated", tiers=(*tiers, Tier(None, draw(prices), draw(prices))))


@given(charges=st.lists(specs(), min_size=1, max_size=3), quantity=quantities, befores=st.lists(befores, min_size=3,
                                                                                                 max_size=3))
def test_integer_pricing_gives_the_decimal_paths_ledger_amount(charges, quantity, befores):
    # given an event under one to three charges, each graduated one after some usage this period
    built, cumulative = [], {}
    for index, spec in enumerate(charges):
        counter = None if spec.model == "per_unit" else 100 + index
        if counter is not None:
            cumulative[counter] = acc.qty_units(befores[index])
        built.append(Charge(index, ratecard.Charge("m", spec.model, spec, {}), None, spec, counter, None, fast=fast_terms(spec)))
    event = EventUsage(key=0, customer_pk=1, event_id="e", meter=None, quantity=quantity,  # type: ignore[arg-type]
                       usage_at=None, dimensions={})  # type: ignore[arg-type]

    # when priced both ways
    qty, cost, counters = priced(event, built, dict(cumulative))
    fast = priced_units(event, built, dict(cumulative))

    # then the same quantity, ledger amount and counters
    assert fast == (qty, acc.money_units_ceil(cost), counters)


def test_terms_the_integers_cannot_hold_go_the_decimal_way():
    assert fast_terms(ChargeSpec("per_unit", unit_price=D("0.000002"))) == ((0, None, 2 * 10**18),)
    assert fast_terms(ChargeSpec("per_unit", unit_price=D("1E-30"))) is None  # beyond 24 decimals
    assert fast_terms(ChargeSpec("volume", tiers=(Tier(None, D(1)),))) is None
    assert fast_terms(ChargeSpec("graduated", tiers=(Tier(D(10), D(1)), Tier(None, D("0.5"))))) == (
        (0, 10 * 10**18, 10**24), (10 * 10**18, None, 5 * 10**23))


def test_charges_kept_across_batches_stay_bounded_whatever_the_dimensions(monkeypatch):
    # given terms kept across batches, and events whose dimensions are all different (an id as dimension)
    from types import SimpleNamespace

    from billing.guardrails.limits import plans

    monkeypatch.setattr(plans, "_CHARGES_MAX", 3)
    meter = SimpleNamespace(pk=1, key="calls")
    definition = {"charges": [{"meter": "calls", "model": "per_unit", "unit_price": "0.5"}]}
    terms = plans.LimitTerms(1, meter, 202612, ratecard.parse(definition), "USD", None, D(10), False, True)  # type: ignore[arg-type]

    # when ten of them are priced
    for n in range(10):
        event = EventUsage(key=n, customer_pk=1, event_id=f"e{n}", meter=meter, quantity=D(1),  # type: ignore[arg-type]
                           usage_at=None, dimensions={"request": f"r{n}"})  # type: ignore[arg-type]
        assert [c.fast for c in terms.matching(event)] == [((0, None, 5 * 10**23),)]

    # then at most three sets of dimensions are kept
    assert len(terms.charges) <= 3


@given(charges=st.lists(specs(), min_size=1, max_size=3), data=st.data())
def test_a_batchs_sums_and_expectations_are_the_same_inline_and_event_by_event(charges, data):
    # given a batch of events under one-charge and several-charge lists (graduated charges share their usage
    # counter across the lists they are in), each counter starting somewhere this period
    from types import SimpleNamespace

    from billing.guardrails.limits import batch

    built = []
    start: dict[int, int] = {}
    for index, spec in enumerate(charges):
        counter = None if spec.model == "per_unit" else 100 + index
        if counter is not None:
            start[counter] = acc.qty_units(data.draw(befores))
        built.append(Charge(index, ratecard.Charge("m", spec.model, spec, {}), None, spec, counter, None, fast=fast_terms(spec)))
    lists = [[c] for c in built] + [built]
    shared = SimpleNamespace(priced=True, hard=D(1), cap=D(1), prepaid=True, quota_id=1, spend_id=2, wallet_id=3,
                             unit_ledger=7, money_ledger=8, period=1)
    meter = SimpleNamespace(pk=5)
    plans = [(EventUsage(key=i, customer_pk=1, event_id=f"e{i}", meter=meter,  # type: ignore[arg-type]
                         quantity=data.draw(st.decimals(min_value=D("0.000001"), max_value=10**6, places=6)),
                         usage_at=None, dimensions={}),  # type: ignore[arg-type]
              shared, data.draw(st.sampled_from(lists)))
             for i in range(data.draw(st.integers(1, 30)))]

    def sums(inline: bool):
        batch.FAST_SUMS = inline
        try:
            debit = batch.BatchDebit.__new__(batch.BatchDebit)
            debit.prepared = SimpleNamespace(plans=plans)  # type: ignore[assignment]
            debit.locked, debit.expect, debit.cumulative, debit.start = False, {}, dict(start), dict(start)
            got = debit._sums()
            return {k: (v[0], v[1].key) for k, v in got.items()}, debit.expect
        finally:
            batch.FAST_SUMS = True

    # when the batch is summed inline and event by event, then the amounts and the expectations agree
    assert sums(True) == sums(False)
