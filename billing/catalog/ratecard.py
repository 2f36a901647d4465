"""A rate-card version's terms, typed: what every reader of a version (limits at ingest, invoicing, the
balance, the dashboard, the export, the console) gets instead of its stored ``definition`` dict.

A version's ``definition`` is parsed once per process (``of_version``: kept by version id and creation time,
a version being never edited) into a frozen ``RateCard``; ``as_definition`` gives the canonical
catalog-file shape back (export, the console's editor). Nothing outside the catalog reads the dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from billing.catalog import pricing
from billing.common import process_caches
from billing.common.fields import decimal_to_text

ZERO = Decimal(0)
# the optional price fields of a charge, in the order the canonical definition writes them
PRICE_FIELDS = ("unit_price", "package_size", "package_price", "free_units", "flat_price", "included",
                "overage_unit_price")


@dataclass(frozen=True, slots=True)
class Markup:
    """A percentage added to a charge's amount, by the value of one of the event's dimensions."""

    dimension: str
    percent: Mapping[str, Decimal]
    default: Decimal = ZERO

    def percent_for(self, group: str | None) -> Decimal:
        """The percent of the dimension's value ``group`` (the default for any other value, or none)."""
        return self.percent.get(group, self.default) if group is not None else self.default


@dataclass(frozen=True, slots=True)
class Charge:
    """One charge: the meter and dimensions it prices, its pricing terms (``spec``) and, for the canonical
    form, the price fields the definition gives (``prices``: name -> value, in canonical order)."""

    meter: str
    model: str
    spec: pricing.ChargeSpec
    prices: Mapping[str, Decimal]
    filter: Mapping[str, str] | None = None
    name: str | None = None
    markup: Markup | None = None
    tiers: tuple[pricing.Tier, ...] | None = None

    @property
    def line_unit_price(self) -> Decimal | None:
        """The unit price an invoice line shows: per_unit's price, or flat_overage's overage price."""
        return self.prices.get("unit_price" if self.model == "per_unit" else "overage_unit_price")

    def as_definition(self) -> dict[str, Any]:
        out: dict[str, Any] = {"meter": self.meter}
        if self.name:
            out["name"] = self.name
        if self.filter:
            out["filter"] = dict(sorted(self.filter.items()))
        out["model"] = self.model
        if self.tiers is not None:
            out["tiers"] = [{"up_to": _text(t.up_to), "unit_price": _text(t.unit_price), "flat_price": _text(t.flat_price)}
                            for t in self.tiers]
        for name in PRICE_FIELDS:
            if name in self.prices:
                out[name] = _text(self.prices[name])
        if self.markup is not None:
            out["markup"] = {"dimension": self.markup.dimension,
                             "percent": {k: _text(v) for k, v in sorted(self.markup.percent.items())},
                             "default": _text(self.markup.default)}
        return out


@dataclass(frozen=True, slots=True)
class Limit:
    """A meter's limits: ``hard``, and a soft one given as a quantity (``soft``) or as a percentage of the
    hard limit (``soft_percent``, from "80%")."""

    meter: str
    hard: Decimal | None = None
    soft: Decimal | None = None
    soft_percent: Decimal | None = None

    @property
    def has_soft(self) -> bool:
        return self.soft is not None or self.soft_percent is not None

    @property
    def soft_limit(self) -> Decimal | None:
        """The soft limit as a quantity (a percentage of no hard limit is none)."""
        if self.soft_percent is not None:
            return self.hard * self.soft_percent / 100 if self.hard is not None else None
        return self.soft

    def as_definition(self) -> dict[str, Any]:
        soft = f"{decimal_to_text(self.soft_percent)}%" if self.soft_percent is not None else _text(self.soft)
        return {"meter": self.meter, "soft": soft, "hard": _text(self.hard)}


@dataclass(frozen=True, slots=True)
class RunLimits:
    """Circuit breakers of one agent run (events sharing ``trace.run_id``): its accepted billable events
    (steps), their cost, and the time since its first event."""

    max_steps: int | None = None
    max_spend: Decimal | None = None
    max_duration_seconds: int | None = None

    def as_definition(self) -> dict[str, Any]:
        return {"max_steps": self.max_steps, "max_spend": _text(self.max_spend),
                "max_duration_seconds": self.max_duration_seconds}


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Spend-velocity anomaly detection: the spend of the last ``window_minutes`` against ``factor`` times
    the customer's baseline rate, ignored below ``min_spend``; ``action`` alert or pause."""

    window_minutes: int
    factor: Decimal
    min_spend: Decimal
    action: str = "alert"

    def as_definition(self) -> dict[str, Any]:
        return {"window_minutes": self.window_minutes, "factor": decimal_to_text(self.factor),
                "min_spend": decimal_to_text(self.min_spend), "action": self.action}


@dataclass(frozen=True, slots=True)
class RateCard:
    """A rate-card version's terms: base fee, charges, limits and spend cap, run limits and anomaly settings,
    and the plan's tax rate (percent; None: the customer's or the installation's, billing/invoicing/tax.py)."""

    base_fee: Decimal = ZERO
    charges: tuple[Charge, ...] = ()
    limits: tuple[Limit, ...] = ()
    spend_cap: Decimal | None = None
    run_limits: RunLimits | None = None
    anomaly: Anomaly | None = None
    tax_rate: Decimal | None = None

    def limit_of(self, meter: str) -> Limit | None:
        return next((limit for limit in self.limits if limit.meter == meter), None)

    def hard_limit(self, meter: str) -> Decimal | None:
        """The first hard limit the card sets on ``meter``, if any."""
        return next((limit.hard for limit in self.limits if limit.meter == meter and limit.hard is not None), None)

    def as_definition(self) -> dict[str, Any]:
        """The canonical catalog-file shape (what ``schema.validate_plan`` stores)."""
        out: dict[str, Any] = {
            "base_fee": decimal_to_text(self.base_fee), "charges": [c.as_definition() for c in self.charges],
            "limits": [limit.as_definition() for limit in self.limits], "spend_cap": _text(self.spend_cap)}
        if self.run_limits is not None:  # written only when set: older definitions keep their shape
            out["run_limits"] = self.run_limits.as_definition()
        if self.anomaly is not None:
            out["anomaly"] = self.anomaly.as_definition()
        if self.tax_rate is not None:
            out["tax_rate"] = decimal_to_text(self.tax_rate)
        return out


# --- from the stored definition ----------------------------------------------------------------------

def _text(value: Decimal | None) -> str | None:
    return None if value is None else decimal_to_text(value)


def _dec(value: Any) -> Decimal | None:
    return None if value is None or value == "" else Decimal(str(value))


def charge_of(raw: Mapping[str, Any]) -> Charge:
    """One charge of a definition (the validated catalog-file shape)."""
    prices = {name: value for name in PRICE_FIELDS if (value := _dec(raw.get(name))) is not None}
    tiers = None
    if raw.get("tiers") is not None:
        tiers = tuple(pricing.Tier(up_to=_dec(t.get("up_to")), unit_price=Decimal(str(t["unit_price"])),
                                   flat_price=_dec(t.get("flat_price")) or ZERO)
                      for t in raw["tiers"])
    spec = pricing.ChargeSpec(
        model=raw["model"], unit_price=prices.get("unit_price", ZERO), tiers=tiers or (),
        package_size=prices.get("package_size", Decimal(1)), package_price=prices.get("package_price", ZERO),
        free_units=prices.get("free_units", ZERO), flat_price=prices.get("flat_price", ZERO),
        included=prices.get("included", ZERO), overage_unit_price=prices.get("overage_unit_price", ZERO),
    )
    markup = None
    if raw.get("markup"):
        m = raw["markup"]
        markup = Markup(m.get("dimension") or "provider",
                        MappingProxyType({k: Decimal(str(v)) for k, v in m["percent"].items()}),
                        _dec(m.get("default")) or ZERO)
    filt = raw.get("filter")
    return Charge(meter=raw["meter"], model=raw["model"], spec=spec,
                  filter=None if filt is None else MappingProxyType(dict(filt)), name=raw.get("name"),
                  markup=markup, tiers=tiers, prices=MappingProxyType(prices))


def limit_of(raw: Mapping[str, Any]) -> Limit:
    """One limit of a definition; its soft limit is a quantity or a percentage such as "80%"."""
    soft = raw.get("soft")
    if isinstance(soft, str) and soft.strip().endswith("%"):
        return Limit(raw["meter"], _dec(raw.get("hard")), soft_percent=Decimal(soft.strip()[:-1]))
    return Limit(raw["meter"], _dec(raw.get("hard")), soft=_dec(soft))


def run_limits_of(raw: Mapping[str, Any] | None) -> RunLimits | None:
    if not raw:
        return None
    steps, seconds = raw.get("max_steps"), raw.get("max_duration_seconds")
    return RunLimits(max_steps=None if steps is None else int(steps), max_spend=_dec(raw.get("max_spend")),
                     max_duration_seconds=None if seconds is None else int(seconds))


def anomaly_of(raw: Mapping[str, Any] | None) -> Anomaly | None:
    if not raw:
        return None
    return Anomaly(window_minutes=int(raw["window_minutes"]), factor=Decimal(str(raw["factor"])),
                   min_spend=Decimal(str(raw["min_spend"])), action=str(raw.get("action") or "alert"))


def parse(definition: Mapping[str, Any]) -> RateCard:
    """A definition (as ``schema.validate_plan`` makes it) as a ``RateCard``."""
    return RateCard(base_fee=_dec(definition.get("base_fee")) or ZERO,
                    charges=tuple(charge_of(c) for c in definition.get("charges") or ()),
                    limits=tuple(limit_of(lim) for lim in definition.get("limits") or ()),
                    spend_cap=_dec(definition.get("spend_cap")),
                    run_limits=run_limits_of(definition.get("run_limits")),
                    anomaly=anomaly_of(definition.get("anomaly")), tax_rate=_dec(definition.get("tax_rate")))


# Versions are never edited: each one's card is parsed once per process, kept by id and creation time (a
# test database that is rolled back may hand an id out again). As many entries as versions: few.
_CARDS: dict[tuple[int, datetime], RateCard] = process_caches.register("billing.catalog.ratecard._CARDS", {})


def cached(pk: int, created_at: datetime) -> RateCard | None:
    """The card of a version already parsed in this process, if any."""
    return _CARDS.get((pk, created_at))


def of_version(pk: int | None, created_at: datetime | None, definition: Mapping[str, Any]) -> RateCard:
    """The card of a stored version (parsed once per process); an unsaved one's is parsed each time."""
    if pk is None or created_at is None:
        return parse(definition)
    key = (pk, created_at)
    card = _CARDS.get(key)
    if card is None:
        card = _CARDS[key] = parse(definition)
    return card
