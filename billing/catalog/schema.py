"""The catalog file (contract.md, "Catalog file"): parse, validate everything, and canonicalise.

Every problem is reported with the path of the offending value (``plans[0].charges[2].tiers[1].up_to``)
and nothing is changed unless the whole file is valid. The same shapes serve the plans API.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated, Any

import msgspec
import yaml

from billing.catalog import money, pricing
from billing.catalog.errors import CatalogCode
from billing.catalog.ratecard import PRICE_FIELDS
from billing.common.errors import CommonCode, DomainError
from billing.common.fields import check_decimal, decimal_to_text
from billing.common.sane import INSTANT_RANGE, instant_utc, json_problem

Key = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


class CatalogError(DomainError):
    """All problems found in a catalog document, each as (path, message), keyed by path in ``fields``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__(CatalogCode.INVALID_CATALOG,
                         "; ".join(f"{path or '(document)'}: {message}" for path, message in problems),
                         fields=self.as_fields())

    def as_fields(self) -> dict[str, list[str]]:
        fields: dict[str, list[str]] = {}
        for path, message in self.problems:
            fields.setdefault(path or "non_field_errors", []).append(message)
        return fields


class TierIn(msgspec.Struct, forbid_unknown_fields=True):
    unit_price: Decimal
    up_to: Decimal | None = None
    flat_price: Decimal = Decimal(0)


class MarkupIn(msgspec.Struct, forbid_unknown_fields=True):
    percent: dict[str, Decimal]
    dimension: str = "provider"
    default: Decimal = Decimal(0)


class ChargeIn(msgspec.Struct, forbid_unknown_fields=True):
    meter: str
    model: str
    filter: dict[str, str] | None = None
    unit_price: Decimal | None = None
    tiers: list[TierIn] | None = None
    package_size: Decimal | None = None
    package_price: Decimal | None = None
    free_units: Decimal | None = None
    flat_price: Decimal | None = None
    included: Decimal | None = None
    overage_unit_price: Decimal | None = None
    markup: MarkupIn | None = None
    name: str | None = None


class LimitIn(msgspec.Struct, forbid_unknown_fields=True):
    meter: str
    hard: Decimal | None = None
    soft: Any = None  # a quantity, or a percentage of the hard limit such as "80%"


class RunLimitsIn(msgspec.Struct, forbid_unknown_fields=True):
    max_steps: int | None = None
    max_spend: Decimal | None = None
    max_duration_seconds: int | None = None


class AnomalyIn(msgspec.Struct, forbid_unknown_fields=True):
    window_minutes: int
    factor: Decimal
    min_spend: Decimal
    action: str = "alert"


class PlanIn(msgspec.Struct, forbid_unknown_fields=True):
    key: Key
    name: str
    currency: str
    effective_from: datetime
    interval: str = "month"
    base_fee: Decimal = Decimal(0)
    charges: list[ChargeIn] = []
    limits: list[LimitIn] = []
    spend_cap: Decimal | None = None
    run_limits: RunLimitsIn | None = None
    anomaly: AnomalyIn | None = None
    tax_rate: Decimal | None = None  # percent; optional, beyond the contract's catalog file (docs/pricing.md)
    version: int | None = None  # written by `catalog export` for the reader; ignored on import


class MeterIn(msgspec.Struct, forbid_unknown_fields=True):
    key: Key
    aggregation: str
    name: str = ""
    unit: str = "unit"
    unique_by: str = ""


class CatalogIn(msgspec.Struct, forbid_unknown_fields=True):
    meters: list[MeterIn] = []
    plans: list[PlanIn] = []


# --- parsing ---------------------------------------------------------------------------------------

class _DecimalLoader(yaml.SafeLoader):
    """YAML floats become exact Decimals from their source text (never through a binary float)."""


def _decimal_constructor(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal:
    return Decimal(loader.construct_scalar(node).replace("_", ""))


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _decimal_constructor)


def problem_path(error: msgspec.ValidationError) -> tuple[str, str]:
    text = str(error)
    if " - at `$" in text:
        message, at = text.rsplit(" - at `$", 1)
        at = at.rstrip("`").lstrip(".")
        if "unknown field `" in message:  # name the field itself: plans[0].surprise
            at = f"{at}.{message.split('`')[1]}".lstrip(".")
        return at, message
    if "missing required field `" in text:
        return text.split("`")[1], text
    return "", text


def _storable(parsed: CatalogIn | PlanIn) -> Any:
    """``parsed`` once no string in it holds what the database refuses (a NUL: billing.common.sane)."""
    problem = json_problem(msgspec.to_builtins(parsed))
    if problem is not None:
        raise CatalogError([problem])
    return parsed


def parse_catalog(text: str | bytes, *, fmt: str | None = None) -> CatalogIn:
    try:
        raw = text.decode() if isinstance(text, bytes) else text
        if fmt == "json" or (fmt is None and raw.lstrip().startswith("{")):
            return _storable(msgspec.json.decode(raw, type=CatalogIn))
        data = yaml.load(raw, Loader=_DecimalLoader)  # noqa: S506 - a SafeLoader subclass
        return _storable(msgspec.convert(data if data is not None else {}, CatalogIn))
    except msgspec.ValidationError as exc:
        raise CatalogError([problem_path(exc)]) from None
    except (msgspec.DecodeError, yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise CatalogError([("", f"not valid {'JSON' if fmt == 'json' else 'YAML/JSON'}: {exc}")]) from None


def parse_plan(data: Any) -> PlanIn:
    """A plan's body: not JSON, or not an object at all, is the contract's 400; anything else wrong in it
    is a catalog problem (422) named by its path."""
    try:
        if isinstance(data, bytes | str):
            return _storable(msgspec.json.decode(data, type=PlanIn))
        return _storable(msgspec.convert(data, PlanIn))
    except msgspec.ValidationError as exc:
        path, message = problem_path(exc)
        if not path and message.startswith("Expected `object`"):
            raise DomainError(CommonCode.INVALID_SHAPE, "Expected a JSON object.") from None
        raise CatalogError([(path, message)]) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DomainError(CommonCode.INVALID_JSON, f"The body is not valid JSON: {exc}") from None


# --- validation and canonical form ---------------------------------------------------------------

def dec_text(value: Decimal | None) -> str | None:
    """Canonical text; a value that cannot be stored (its problem is reported) as given, never expanded."""
    if value is None:
        return None
    return str(value) if check_decimal(value) else decimal_to_text(value)


def check_amount(problems: list[tuple[str, str]], path: str, value: Decimal | None, *, positive: bool = False) -> None:
    if value is None:
        return
    problem = check_decimal(value)
    if problem:
        problems.append((path, f"value {problem}"))
    elif value < 0 or (positive and value == 0):
        problems.append((path, "must be greater than 0" if positive else "must not be negative"))


REQUIRED = {
    "per_unit": ("unit_price",),
    "graduated": ("tiers",),
    "volume": ("tiers",),
    "package": ("package_size", "package_price"),
    "flat_overage": ("flat_price", "included", "overage_unit_price"),
}
ALLOWED = {
    "per_unit": {"unit_price"},
    "graduated": {"tiers"},
    "volume": {"tiers"},
    "package": {"package_size", "package_price", "free_units"},
    "flat_overage": {"flat_price", "included", "overage_unit_price"},
}


def validate_charge(charge: ChargeIn, path: str, meters: set[str], problems: list[tuple[str, str]]) -> dict[str, Any]:
    if charge.meter not in meters:
        problems.append((f"{path}.meter", f"unknown meter '{charge.meter}'"))
    if charge.model not in pricing.MODELS:
        problems.append((f"{path}.model", f"must be one of {', '.join(pricing.MODELS)}"))
        return {}
    for name in REQUIRED[charge.model]:
        if getattr(charge, name) is None:
            problems.append((f"{path}.{name}", f"required for model {charge.model}"))
    for name in (*PRICE_FIELDS, "tiers"):
        if getattr(charge, name) is not None and name not in ALLOWED[charge.model]:
            problems.append((f"{path}.{name}", f"not used by model {charge.model}"))
    for name in PRICE_FIELDS:
        check_amount(problems, f"{path}.{name}", getattr(charge, name), positive=name == "package_size")
    out: dict[str, Any] = {"meter": charge.meter}
    if charge.name:
        out["name"] = charge.name
    if charge.filter:
        out["filter"] = dict(sorted(charge.filter.items()))
    out["model"] = charge.model
    if charge.tiers is not None:
        out["tiers"] = _validate_tiers(charge.tiers, f"{path}.tiers", problems)
    for name in PRICE_FIELDS:
        if getattr(charge, name) is not None:
            out[name] = dec_text(getattr(charge, name))
    if charge.markup is not None:
        for provider, percent in charge.markup.percent.items():
            check_amount(problems, f"{path}.markup.percent.{provider}", percent)
        check_amount(problems, f"{path}.markup.default", charge.markup.default)
        out["markup"] = {"dimension": charge.markup.dimension,
                         "percent": {k: dec_text(v) for k, v in sorted(charge.markup.percent.items())},
                         "default": dec_text(charge.markup.default)}
    return out


def _validate_tiers(tiers: list[TierIn], path: str, problems: list[tuple[str, str]]) -> list[dict[str, Any]]:
    if not tiers:
        problems.append((path, "needs at least one tier"))
    previous = Decimal(0)
    out = []
    for index, tier in enumerate(tiers):
        at = f"{path}[{index}]"
        last = index == len(tiers) - 1
        if tier.up_to is None and not last:
            problems.append((f"{at}.up_to", "only the last tier may be open-ended (null)"))
        if tier.up_to is not None:
            if last:
                problems.append((f"{at}.up_to", "the last tier must be open-ended (null)"))
            check_amount(problems, f"{at}.up_to", tier.up_to, positive=True)
            if tier.up_to <= previous:
                problems.append((f"{at}.up_to", f"must be greater than the previous bound {dec_text(previous)}"))
            previous = max(previous, tier.up_to)
        check_amount(problems, f"{at}.unit_price", tier.unit_price)
        check_amount(problems, f"{at}.flat_price", tier.flat_price)
        out.append({"up_to": dec_text(tier.up_to), "unit_price": dec_text(tier.unit_price),
                    "flat_price": dec_text(tier.flat_price)})
    return out


def validate_plan(plan: PlanIn, path: str, meters: set[str], problems: list[tuple[str, str]]) -> dict[str, Any]:
    """Check one plan entry; return its canonical version definition."""
    if not money.is_currency(plan.currency):
        problems.append((f"{path}.currency", f"unknown or unsupported currency '{plan.currency}'"))
    if plan.interval != "month":
        problems.append((f"{path}.interval", "only 'month' (calendar month, UTC) is supported"))
    if plan.effective_from.tzinfo is None:
        problems.append((f"{path}.effective_from", "must carry a UTC offset"))
    elif instant_utc(plan.effective_from) is None:
        problems.append((f"{path}.effective_from", INSTANT_RANGE))
    check_amount(problems, f"{path}.base_fee", plan.base_fee)
    check_amount(problems, f"{path}.spend_cap", plan.spend_cap, positive=True)
    charges = [validate_charge(c, f"{path}.charges[{i}]", meters, problems) for i, c in enumerate(plan.charges)]
    limits = validate_limits(plan.limits, path, meters, problems)
    definition: dict[str, Any] = {
        "base_fee": dec_text(plan.base_fee),
        "charges": charges,
        "limits": limits,
        "spend_cap": dec_text(plan.spend_cap),
    }
    if plan.run_limits is not None:  # only when set: definitions without them keep their shape
        definition["run_limits"] = validate_run_limits(plan.run_limits, f"{path}.run_limits", problems)
    if plan.anomaly is not None:
        definition["anomaly"] = validate_anomaly(plan.anomaly, f"{path}.anomaly", problems)
    if plan.tax_rate is not None:
        definition["tax_rate"] = validate_tax_rate(plan.tax_rate, f"{path}.tax_rate", problems)
    return definition


TAX_RATE_PLACES = 3  # what an invoice stores of its rate (Invoice.tax_rate, as a customer's)


def validate_tax_rate(rate: Decimal, path: str, problems: list[tuple[str, str]]) -> str | None:
    """A plan's tax rate: a percent from 0 to 100, at most three decimals."""
    problem = check_decimal(rate)
    if problem:
        problems.append((path, f"value {problem}"))
    elif not 0 <= rate <= 100:
        problems.append((path, "a percent from 0 to 100"))
    elif rate != rate.quantize(Decimal(1).scaleb(-TAX_RATE_PLACES)):
        problems.append((path, f"at most {TAX_RATE_PLACES} decimal places"))
    return dec_text(rate)


def validate_limits(entries: list[LimitIn], path: str, meters: set[str], problems: list[tuple[str, str]]
                    ) -> list[dict[str, Any]]:
    """A plan's (or a customer override's) limits, one per meter: canonical, problems by path."""
    limits = []
    seen: set[str] = set()
    for index, limit in enumerate(entries):
        at = f"{path}.limits[{index}]"
        if limit.meter not in meters:
            problems.append((f"{at}.meter", f"unknown meter '{limit.meter}'"))
        if limit.meter in seen:
            problems.append((f"{at}.meter", f"a second limit for meter '{limit.meter}'"))
        seen.add(limit.meter)
        check_amount(problems, f"{at}.hard", limit.hard, positive=True)
        soft: str | None = None
        raw_soft = limit.soft
        if isinstance(raw_soft, str) and not raw_soft.strip().endswith("%"):
            with contextlib.suppress(ArithmeticError):
                raw_soft = Decimal(raw_soft)
        elif isinstance(raw_soft, int | float) and not isinstance(raw_soft, bool):
            raw_soft = Decimal(str(raw_soft))
        if isinstance(raw_soft, str):
            if not raw_soft.strip().endswith("%"):
                problems.append((f"{at}.soft", "a number or a percentage of the hard limit such as '80%'"))
            else:
                try:
                    pct = Decimal(raw_soft.strip()[:-1])
                    if not 0 < pct <= 100:
                        problems.append((f"{at}.soft", "a percentage must be in (0, 100]"))
                    elif limit.hard is None:
                        problems.append((f"{at}.soft", "a percentage needs a hard limit"))
                    soft = f"{decimal_to_text(pct)}%"
                except ArithmeticError:
                    problems.append((f"{at}.soft", "not a number"))
        elif isinstance(raw_soft, Decimal):
            check_amount(problems, f"{at}.soft", raw_soft, positive=True)
            if raw_soft.is_finite() and limit.hard is not None and raw_soft > limit.hard:
                problems.append((f"{at}.soft", "must not exceed the hard limit"))
            soft = dec_text(raw_soft)
        elif raw_soft is not None:
            problems.append((f"{at}.soft", "a number or a percentage of the hard limit such as '80%'"))
        if limit.hard is None and limit.soft is None:
            problems.append((at, "needs a soft or a hard limit"))
        limits.append({"meter": limit.meter, "soft": soft, "hard": dec_text(limit.hard)})
    return limits


def validate_run_limits(limits: RunLimitsIn, path: str, problems: list[tuple[str, str]]) -> dict[str, Any]:
    """Circuit breakers of agent runs: each one optional, each positive; at least one."""
    for name in ("max_steps", "max_duration_seconds"):
        value = getattr(limits, name)
        if value is not None and value <= 0:
            problems.append((f"{path}.{name}", "must be a positive whole number"))
    check_amount(problems, f"{path}.max_spend", limits.max_spend, positive=True)
    if limits.max_steps is None and limits.max_spend is None and limits.max_duration_seconds is None:
        problems.append((path, "needs max_steps, max_spend or max_duration_seconds"))
    return {"max_steps": limits.max_steps, "max_spend": dec_text(limits.max_spend),
            "max_duration_seconds": limits.max_duration_seconds}


def validate_anomaly(anomaly: AnomalyIn, path: str, problems: list[tuple[str, str]]) -> dict[str, Any]:
    """Spend-velocity anomaly settings: a window of 1 minute to 1 day, a factor above 1, a spend floor."""
    if not 1 <= anomaly.window_minutes <= 1440:
        problems.append((f"{path}.window_minutes", "must be between 1 and 1440"))
    check_amount(problems, f"{path}.factor", anomaly.factor, positive=True)
    if anomaly.factor.is_finite() and anomaly.factor <= 1:
        problems.append((f"{path}.factor", "must be greater than 1"))
    check_amount(problems, f"{path}.min_spend", anomaly.min_spend)
    if anomaly.action not in ("alert", "pause"):
        problems.append((f"{path}.action", "must be 'alert' or 'pause'"))
    return {"window_minutes": anomaly.window_minutes, "factor": dec_text(anomaly.factor),
            "min_spend": dec_text(anomaly.min_spend), "action": anomaly.action}


def effective_from_utc(plan: PlanIn) -> datetime:
    return plan.effective_from.astimezone(timezone.utc)


def canonical_json(definition: dict[str, Any]) -> str:
    return json.dumps(definition, sort_keys=True, separators=(",", ":"))
