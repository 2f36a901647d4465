"""Pricing an event for the limits: the charges it matches, their marginal cost after the period's usage
(exact; in integers when the terms allow it), and the expectations a booking states about usage counters."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from decimal import Context as DecimalContext
from typing import Any

from billing.catalog import pricing, ratecard
from billing.catalog.money import LEDGER_SCALE
from billing.guardrails import accounts as acc
from billing.guardrails.limits.events import EventUsage
from ledger.types import Account


def _charge_key(charge: ratecard.Charge, group: str | None) -> str:
    filt = ",".join(f"{k}={v}" for k, v in sorted((charge.filter or {}).items()))
    return f"{filt}|{group or ''}"


def counter_keys(matching: list[tuple[ratecard.Charge, str | None]]) -> list[str]:
    """The usage counters' keys of an event's matching charges: ``_charge_key``, and for a charge whose key
    an earlier one of them has (two charges of a meter with the same filter), that key with ``#<n>``, so
    that each charge counts its own quantity (a shared counter would be moved once per charge)."""
    keys: list[str] = []
    seen: dict[str, int] = {}
    for charge, group in matching:
        key = _charge_key(charge, group)
        count = seen[key] = seen.get(key, 0) + 1
        keys.append(f"{key}#{count - 1}" if count > 1 else key)
    return keys


def matching_charges(card: ratecard.RateCard, event: EventUsage) -> list[tuple[ratecard.Charge, str | None]]:
    """The card's charges of the event's meter whose filter its dimensions match, each with the event's
    markup group (the value of its markup's dimension; None without a markup)."""
    out = []
    dimensions = event.dimensions
    for charge in card.charges:
        if charge.meter != event.meter.key:
            continue
        if charge.filter and any(dimensions.get(k) != v for k, v in charge.filter.items()):
            continue
        markup = charge.markup
        out.append((charge, dimensions.get(markup.dimension) if markup else None))
    return out


_ZERO = Decimal(0)


class NegativeCost(Exception):
    """BatchDebit._sums met an event whose marginal cost is negative: decide the batch one by one."""


# Integer pricing for the common terms: a price with at most _PRICE_SCALE decimals is an integer of price
# units, a quantity one of quantity units (10^-18), so an event's exact cost is an integer of 10^-(18 +
# _PRICE_SCALE) and its ledger amount (10^-12, rounded up) one ceiling division away. It gives exactly what
# the Decimal path gives (a hypothesis test pins it) at a fraction of its cost, per event of every batch.
_PRICE_SCALE = 24


QTY_SCALE = acc.QTY_SCALE




COST_DIVISOR = 10 ** (acc.QTY_SCALE + _PRICE_SCALE - LEDGER_SCALE)


EXACT = DecimalContext(prec=80)


@dataclass
class Charge:
    """A charge matching an event: its terms parsed once per batch, and its usage counter (None when the
    charge is linear and needs no running total)."""

    index: int  # position among the event's matching charges: part of the counter transfer's id
    charge: ratecard.Charge
    group: str | None
    spec: pricing.ChargeSpec
    counter_id: int | None
    markup: Decimal | None = None  # percent for the event's group, parsed once
    counter: Account | None = None  # the usage counter's account (to create if missing)
    # the terms in integers, when they allow it (fast_terms): (lower, upper or None, price) per tier, in
    # quantity units and price units; one open tier for per_unit
    fast: tuple[tuple[int, int | None, int], ...] | None = None

    def marginal(self, before: Decimal, quantity: Decimal) -> Decimal:
        """What ``quantity`` more costs after ``before`` units this period, markup included (exact)."""
        amount = pricing.marginal(before, quantity, self.spec)
        if self.markup is not None:
            amount = pricing.with_markup(amount, self.markup)
        return amount

    def ledger_units(self, before: int, quantity: Decimal) -> int:
        """What ``quantity`` more costs after ``before`` quantity units this period, in ledger money units,
        telescoping (docs/ledger.md, "Rounding"): ``ceil(F(after)) - ceil(F(before))`` with ``F`` the charge's
        price of the period's quantity (markup included) and ``ceil`` up to the ledger scale, so that a
        period's amounts add up to ``ceil(F(period's quantity))``. Negative when the event takes the period
        into a cheaper volume tier. When the exact marginal cost is a whole number of units it is the
        amount, whatever ``F(before)``: one multiplication (the common case)."""
        start = acc.units_to_qty(before)
        exact = EXACT.scaleb(self.marginal(start, quantity), LEDGER_SCALE)
        if exact == exact.to_integral_value():
            return int(exact)
        price = pricing.price(start, self.spec).amount
        if self.markup is not None:
            price = pricing.with_markup(price, self.markup)
        base = EXACT.scaleb(price, LEDGER_SCALE)
        return ceil_units(EXACT.add(base, exact)) - ceil_units(base)


def priced(event: EventUsage, charges: list[Charge], cumulative: dict[int, int]) -> tuple[int, Decimal, list[int]]:
    """The event's quantity in ledger units, its ledger cost after the counters' ``cumulative`` usage (a
    Decimal, exact at the ledger scale; negative when the event takes the period into a cheaper volume
    tier), and the counters it moves (the caller advances them if the event is taken).

    The rounding rule (docs/ledger.md, "Rounding"): each charge with a usage counter telescopes
    (``Charge.ledger_units``: ``ceil(F(after)) - ceil(F(before))``); the linear charges' exact cost (per
    unit: no running total) is summed and rounded up once per event."""
    quantity = event.quantity
    linear = _ZERO
    units = 0
    counters: list[int] = []
    for charge in charges:
        counter_id = charge.counter_id
        if counter_id is None:
            linear += charge.marginal(_ZERO, quantity)
        else:
            units += charge.ledger_units(cumulative[counter_id], quantity)
            counters.append(counter_id)
    if linear:
        units += ceil_units(EXACT.scaleb(linear, LEDGER_SCALE))
    return acc.qty_units(quantity), acc.units_to_money(units), counters


def ceil_units(scaled: Decimal) -> int:
    """An amount already scaled to ledger units, rounded up to a whole unit (exact)."""
    return int(scaled.to_integral_value(rounding=ROUND_CEILING))


def fast_terms(spec: pricing.ChargeSpec) -> tuple[tuple[int, int | None, int], ...] | None:
    """Tiers (lower, upper, price) in integer units for a per_unit or graduated charge whose prices and
    bounds are exact in them; None for any other terms (priced the Decimal way)."""
    def units(value: Decimal, scale: int) -> int | None:
        scaled = EXACT.scaleb(value, scale)
        return int(scaled) if scaled == scaled.to_integral_value() else None

    if spec.model == "per_unit":
        price = units(spec.unit_price, _PRICE_SCALE)
        return None if price is None else ((0, None, price),)
    if spec.model != "graduated" or not spec.tiers:
        return None
    tiers: list[tuple[int, int | None, int]] = []
    lower = 0
    for tier in spec.tiers:
        price = units(tier.unit_price, _PRICE_SCALE)
        upper = None if tier.up_to is None else units(tier.up_to, acc.QTY_SCALE)
        if price is None or (tier.up_to is not None and upper is None):
            return None
        tiers.append((lower, upper, price))
        if upper is None:
            break
        lower = upper
    return tuple(tiers)


def priced_units(event: EventUsage, charges: list[Charge], cumulative: dict[int, int],
                  expect: dict[int, list[Any]] | None = None, start: dict[int, int] | None = None,
                  tiers_used: dict[int, tuple[int, int | None, int]] | None = None) -> tuple[int, int, list[int]]:
    """``priced`` with the cost as ledger money units: in integers when every charge allows it (per unit;
    graduated with the period's usage already inside a tier the event does not leave, and the event's cost
    in it a whole number of ledger units, so that it telescopes whatever the counter's value), else the
    Decimal way. With ``expect``, narrows each usage counter's [low, high] to the values
    it may have had at ``start`` for this price to stay the same: inside the same tier, or, priced the
    Decimal way, exactly the value read. ``tiers_used``: counter -> the tier (lower, upper, price) an
    integer-priced counter was priced in."""
    qty = acc.qty_units(event.quantity)
    num = 0
    counters: list[int] = []
    for charge in charges:
        tiers = charge.fast
        if tiers is None:
            break
        counter_id = charge.counter_id
        if counter_id is None:  # per unit
            num += qty * tiers[0][2]
            continue
        before = cumulative[counter_id]
        for lower, upper, price in tiers:  # pricing.marginal's own shortcut, in integers
            if upper is None or before <= upper:
                if before > lower and (upper is None or before + qty <= upper) and not qty * price % COST_DIVISOR:
                    num += qty * price
                    counters.append(counter_id)
                    if tiers_used is not None:
                        tiers_used[counter_id] = (lower, upper, price)
                    if expect is not None and start is not None:
                        shift = before - start[counter_id]  # what this batch counted before the event
                        narrow(expect, counter_id, lower + 1 - shift, None if upper is None else upper - qty - shift)
                    tiers = ()
                break
        if tiers:
            break
    else:
        return qty, -(-num // COST_DIVISOR), counters
    qty, cost, counters = priced(event, charges, cumulative)
    if expect is not None and start is not None:
        for counter_id in counters:
            narrow(expect, counter_id, start[counter_id], start[counter_id])
    return qty, int(EXACT.scaleb(cost, LEDGER_SCALE)), counters


def narrow(expect: dict[int, list[Any]], counter_id: int, low: int, high: int | None) -> None:
    bounds = expect.get(counter_id)
    if bounds is None:
        expect[counter_id] = [low, high]
        return
    bounds[0] = max(bounds[0], low)
    if high is not None:
        bounds[1] = high if bounds[1] is None else min(bounds[1], high)
