"""Charge models as pure functions of (quantity over the period, charge definition).

Formulas (docs/pricing.md has them with worked examples). ``q`` is the period's quantity, tiers are
``(up_to, unit_price, flat_price)`` with inclusive, cumulative bounds; tier *i* covers
``(up_to[i-1], up_to[i]]`` (``up_to[-1] = 0``); a tier is *reached* when ``q > up_to[i-1]`` and
``q > 0``. Zero quantity costs nothing in every model.

- per_unit:     q * unit_price
- graduated:    sum over reached tiers of (min(q, up_to_i) - up_to_{i-1}) * unit_price_i + flat_price_i
- volume:       q * unit_price_k + flat_price_k, k = the last reached tier
- package:      ceil(max(q - free_units, 0) / package_size) * package_price
- flat_overage: flat_price + max(q - included, 0) * overage_unit_price   (for q > 0)

Results are exact Decimals; nothing here rounds (billing.catalog.money does, once per line).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Context, Decimal, localcontext

ZERO = Decimal(0)
MODELS = ("per_unit", "graduated", "volume", "package", "flat_overage")


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None
    unit_price: Decimal
    flat_price: Decimal = ZERO


@dataclass(frozen=True)
class ChargeSpec:
    """A charge's pricing terms; which of the fields matter depends on ``model``."""

    model: str
    unit_price: Decimal = ZERO
    tiers: tuple[Tier, ...] = ()
    package_size: Decimal = Decimal(1)
    package_price: Decimal = ZERO
    free_units: Decimal = ZERO
    flat_price: Decimal = ZERO
    included: Decimal = ZERO
    overage_unit_price: Decimal = ZERO


@dataclass(frozen=True)
class Priced:
    amount: Decimal
    tier_index: int | None = None  # the last tier reached (tiered models), 0-based
    next_tier_at: Decimal | None = None  # the quantity above which the next tier starts
    next_tier_unit_price: Decimal | None = None
    tiers_used: tuple[tuple[int, Decimal, Decimal], ...] = field(default=())  # (tier, units, amount)


def price(quantity: Decimal, spec: ChargeSpec) -> Priced:
    # 28 significant digits (Decimal's default) is not enough for 10^12 tokens at a 10-decimal price
    # plus a markup; 80 keeps every product and quotient here exact.
    with localcontext(prec=80):
        return _price(quantity, spec)


_EXACT = Context(prec=80)


def marginal(before: Decimal, quantity: Decimal, spec: ChargeSpec) -> Decimal:
    """``price(before + quantity) - price(before)``, exactly: what ``quantity`` more costs after ``before``
    units this period. Per unit, and graduated within the tier ``before`` is already in, it is one
    multiplication (limited ingest prices every event this way); otherwise the difference of prices."""
    if quantity > ZERO:
        if spec.model == "per_unit":
            return _EXACT.multiply(quantity, spec.unit_price)
        if spec.model == "graduated" and before > ZERO:
            lower = ZERO
            for tier in spec.tiers:
                if tier.up_to is None or before <= tier.up_to:
                    # ``before`` is in this tier, past its lower bound: the tier (and its flat price) is reached
                    if before > lower and (tier.up_to is None or before + quantity <= tier.up_to):
                        return _EXACT.multiply(quantity, tier.unit_price)
                    break
                lower = tier.up_to
    with localcontext(prec=80):
        return _price(before + quantity, spec).amount - _price(before, spec).amount


def _price(quantity: Decimal, spec: ChargeSpec) -> Priced:
    if quantity <= ZERO:
        first = _next_tier(spec, -1)
        return Priced(ZERO, None, *first) if spec.tiers else Priced(ZERO)
    if spec.model == "per_unit":
        return Priced(quantity * spec.unit_price)
    if spec.model == "graduated":
        return _graduated(quantity, spec)
    if spec.model == "volume":
        return _volume(quantity, spec)
    if spec.model == "package":
        billable = max(quantity - spec.free_units, ZERO)
        packages = (billable / spec.package_size).to_integral_value(rounding=ROUND_CEILING)
        return Priced(packages * spec.package_price)
    if spec.model == "flat_overage":
        return Priced(spec.flat_price + max(quantity - spec.included, ZERO) * spec.overage_unit_price)
    raise ValueError(f"unknown charge model {spec.model!r}")


def _reached(quantity: Decimal, tiers: tuple[Tier, ...]) -> int:
    """Index of the last tier reached by ``quantity`` (> 0)."""
    for index, tier in enumerate(tiers):
        if tier.up_to is None or quantity <= tier.up_to:
            return index
    return len(tiers) - 1


def _next_tier(spec: ChargeSpec, index: int) -> tuple[Decimal | None, Decimal | None]:
    if index + 1 >= len(spec.tiers):
        return None, None
    starts_above = ZERO if index < 0 else spec.tiers[index].up_to
    return starts_above, spec.tiers[index + 1].unit_price


def _graduated(quantity: Decimal, spec: ChargeSpec) -> Priced:
    total, lower, used = ZERO, ZERO, []
    last = _reached(quantity, spec.tiers)
    for index, tier in enumerate(spec.tiers[: last + 1]):
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        units = upper - lower
        amount = units * tier.unit_price + tier.flat_price
        used.append((index, units, amount))
        total += amount
        lower = tier.up_to if tier.up_to is not None else lower
    return Priced(total, last, *_next_tier(spec, last), tiers_used=tuple(used))


def _volume(quantity: Decimal, spec: ChargeSpec) -> Priced:
    index = _reached(quantity, spec.tiers)
    tier = spec.tiers[index]
    amount = quantity * tier.unit_price + tier.flat_price
    return Priced(amount, index, *_next_tier(spec, index), tiers_used=((index, quantity, amount),))


def with_markup(amount: Decimal, percent: Decimal) -> Decimal:
    """A cost price plus a percentage markup, exact."""
    with localcontext(prec=80):
        return amount * (Decimal(100) + percent) / Decimal(100)
