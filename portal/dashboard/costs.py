"""What a slice of usage (a model, a project, an agent run, one step) cost this period: an attribution.

Charges are priced on the whole period's quantity (tiers are cumulative), so one event has no price of
its own. The dashboard uses the **average unit price of each charge line so far**: the line's exact
amount (``billing.invoicing.compute.upcoming_invoice``, priced by ``billing.catalog.pricing`` with the
rate-card versions in effect) divided by the line's quantity, both with the charge's correction and
adjustment lines (which the invoice shows apart) added. An event costs its quantity times the
average price of every charge line it falls under (same meter, its dimensions match the charge's
filter and, for a markup, the line's group). So the slices of a breakdown add up to the usage charges of
the upcoming invoice (before each line is rounded to the cent), a flat part (package, included
allowance, a tier's flat price) is spread over the units, and when a tier boundary is crossed every
slice's cost moves with it. Base fees and meters that do not add up (max, unique_count, latest) are
not attributed to slices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, localcontext

from billing.catalog.models import Meter
from billing.invoicing.lines import ADDITIVE, Estimate

USAGE_KINDS = ("charge", "correction", "adjustment")  # lines priced from usage; not the base fee


@dataclass(frozen=True)
class UnitCost:
    meter: str
    filter: tuple[tuple[str, str], ...]
    group: tuple[tuple[str, str], ...]
    unit_price: Decimal  # exact average price per unit of the line so far

    def applies(self, meter: str, dimensions: Mapping[str, str | None]) -> bool:
        return meter == self.meter and all(dimensions.get(k) == v for k, v in (*self.filter, *self.group))


def unit_costs(estimate: Estimate | None) -> list[UnitCost]:
    if estimate is None:
        return []
    additive = set(Meter.objects.filter(aggregation__in=ADDITIVE).values_list("key", flat=True))
    # a charge's correction and adjustment lines (the invoice shows them apart) add up with it to the
    # whole period's usage and amount: the slices hold every event, corrections included
    sums: dict[tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]], list[Decimal]] = {}
    for line in estimate.lines:
        if line.kind not in USAGE_KINDS or line.meter not in additive:
            continue
        key = (line.meter, tuple(sorted((line.filter or {}).items())), tuple(sorted((line.group or {}).items())))
        amount_quantity = sums.setdefault(key, [Decimal(0), Decimal(0)])
        amount_quantity[0] += line.amount
        amount_quantity[1] += line.quantity
    out = []
    for (meter, filt, group), (amount, quantity) in sums.items():
        if not quantity:
            continue
        with localcontext(prec=80):
            price = amount / quantity
        out.append(UnitCost(meter, filt, group, price))
    return out


def filter_keys(costs: list[UnitCost]) -> set[str]:
    """The dimensions a slice must be grouped by so that each charge's filter can be matched."""
    return {k for c in costs for k, _ in (*c.filter, *c.group)}


def cost_of(costs: list[UnitCost], meter: str, dimensions: Mapping[str, str | None], quantity: Decimal) -> Decimal:
    with localcontext(prec=80):
        return sum((quantity * c.unit_price for c in costs if c.applies(meter, dimensions)), Decimal(0))
