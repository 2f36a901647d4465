"""Charge models against hand-computed tables (docs/pricing.md), tier edges, zero, huge, fine prices."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.catalog import money
from billing.catalog.pricing import ChargeSpec, Tier, marginal, price, with_markup

TIERS = (Tier(D(10000), D("0.002"), D(0)), Tier(D(100000), D("0.0015"), D(5)), Tier(None, D("0.001")))
GRADUATED = ChargeSpec("graduated", tiers=TIERS)
VOLUME = ChargeSpec("volume", tiers=TIERS)


@pytest.mark.parametrize(("quantity", "amount", "tier"), [
    ("0", "0", None),
    ("1", "0.002", 1),
    ("10000", "20", 1),             # exactly at up_to: still tier 1
    ("10001", "25.0015", 2),        # one above: tier 2 reached, its flat fee once
    ("100000", "160", 2),
    ("100001", "160.001", 3),
    ("1000000000000", "1000000060", 3),  # 10^12 tokens
])
def test_graduated(quantity, amount, tier):
    priced = price(D(quantity), GRADUATED)

    assert priced.amount == D(amount)
    assert priced.tier_index == (None if tier is None else tier - 1)


@pytest.mark.parametrize(("quantity", "amount", "tier"), [
    ("0", "0", None),
    ("1", "0.002", 1),
    ("10000", "20", 1),
    ("10001", "20.0015", 2),        # all units at tier 2's price + its flat fee
    ("100000", "155", 2),
    ("100001", "100.001", 3),
    ("1000000000000", "1000000000", 3),
])
def test_volume(quantity, amount, tier):
    priced = price(D(quantity), VOLUME)

    assert priced.amount == D(amount)
    assert priced.tier_index == (None if tier is None else tier - 1)


def test_next_tier_threshold_and_price():
    assert (price(D(500), GRADUATED).next_tier_at, price(D(500), GRADUATED).next_tier_unit_price) == (D(10000), D("0.0015"))
    assert price(D(10000), GRADUATED).next_tier_at == D(10000)
    assert price(D(10001), GRADUATED).next_tier_at == D(100000)
    assert price(D(100001), GRADUATED).next_tier_at is None
    assert price(D(0), GRADUATED).next_tier_at == D(0)  # nothing used yet: the first tier starts above 0


@pytest.mark.parametrize(("quantity", "amount"), [
    ("0", "0"), ("100", "0"), ("101", "5"), ("1100", "5"), ("1101", "10"), ("1000000000100", "5000000000"),
])
def test_package_after_free_units(quantity, amount):
    spec = ChargeSpec("package", package_size=D(1000), package_price=D("5.00"), free_units=D(100))

    assert price(D(quantity), spec).amount == D(amount)


@pytest.mark.parametrize(("quantity", "amount"), [("0", "0"), ("1", "49"), ("50000", "49"), ("50001", "49.001"),
                                                   ("150000", "149")])
def test_flat_overage(quantity, amount):
    spec = ChargeSpec("flat_overage", flat_price=D(49), included=D(50000), overage_unit_price=D("0.001"))

    assert price(D(quantity), spec).amount == D(amount)


@pytest.mark.parametrize(("quantity", "amount"), [
    ("0", "0"), ("3", "0.0000000369"), ("1000000000000", "12300"), ("0.5", "0.00000000615"),
])
def test_per_unit_with_ten_decimal_price(quantity, amount):
    assert price(D(quantity), ChargeSpec("per_unit", unit_price=D("0.0000000123"))).amount == D(amount)


def test_free_allowance_is_a_zero_price_first_tier():
    spec = ChargeSpec("graduated", tiers=(Tier(D(1000), D(0)), Tier(None, D("0.01"))))

    assert price(D(1000), spec).amount == 0
    assert price(D(1001), spec).amount == D("0.01")


def test_markup_is_a_percentage_on_the_cost_price():
    assert with_markup(D(10), D(20)) == D(12)
    assert with_markup(D("0.000000001"), D("12.5")) == D("0.000000001125")


@pytest.mark.parametrize(("amount", "currency", "minor"), [
    ("0.005", "USD", 1), ("0.0049999", "USD", 0), ("-0.005", "USD", -1), ("12.345", "USD", 1235),
    ("1.5", "JPY", 2), ("1.0005", "KWD", 1001),
])
def test_one_rounding_rule_half_up_to_the_minor_unit(amount, currency, minor):
    assert money.to_minor(D(amount), currency) == minor


def test_ledger_units_are_exact_at_scale_12():
    assert money.to_ledger_units(D("0.000002")) == 2_000_000
    with pytest.raises(ValueError, match="finer"):
        money.to_ledger_units(D("0.0000000000001"))


quantities = st.decimals(min_value=0, max_value=10**13, places=6, allow_nan=False, allow_infinity=False)
prices = st.decimals(min_value=0, max_value=100, places=10, allow_nan=False, allow_infinity=False)


@st.composite
def tier_tables(draw):
    bounds = sorted(set(draw(st.lists(st.integers(1, 10**9), min_size=0, max_size=5))))
    tiers = [Tier(D(b), draw(prices), draw(prices)) for b in bounds]
    return (*tiers, Tier(None, draw(prices), draw(prices)))


@given(tiers=tier_tables(), a=quantities, b=quantities)
def test_graduated_is_monotone_in_quantity(tiers, a, b):
    low, high = sorted((a, b))
    spec = ChargeSpec("graduated", tiers=tiers)

    assert price(low, spec).amount <= price(high, spec).amount


@given(tiers=tier_tables(), q=quantities)
def test_graduated_equals_the_sum_of_its_tiers(tiers, q):
    priced = price(q, ChargeSpec("graduated", tiers=tiers))

    assert priced.amount == sum((amount for _, _, amount in priced.tiers_used), D(0))
    assert sum((units for _, units, _ in priced.tiers_used), D(0)) == q


small = st.decimals(min_value=0, max_value=2 * 10**9, places=6, allow_nan=False, allow_infinity=False)


@given(tiers=tier_tables(), before=small, more=small, model=st.sampled_from(["graduated", "per_unit", "volume"]))
def test_marginal_is_exactly_the_difference_of_prices(tiers, before, more, model):
    # the fast paths (per unit; graduated inside the tier already reached) and the general one agree
    spec = ChargeSpec(model, unit_price=tiers[0].unit_price, tiers=tiers)

    assert marginal(before, more, spec) == price(before + more, spec).amount - price(before, spec).amount


def test_marginal_inside_a_tier_and_across_its_end():
    spec = ChargeSpec("graduated", tiers=(Tier(D(100), D("0.01"), D(5)), Tier(None, D("0.001"))))
    assert marginal(D(0), D(10), spec) == D("5.10")  # the first unit reaches the tier: its flat price too
    assert marginal(D(10), D(90), spec) == D("0.90")  # inside the tier, up to its inclusive end
    assert marginal(D(90), D(30), spec) == D("0.10") + D("0.020")  # across the end
