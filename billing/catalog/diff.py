"""Two rate cards side by side (a draft or a version against the version in effect): the base fee, spend
cap, each charge with its tiers and each limit, as added, removed, changed or unchanged, described in words.
Pure: definitions in (the catalog-file shape, validated or as typed), rows out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODEL_WORDS = {"per_unit": "per unit", "graduated": "graduated tiers", "volume": "volume tiers",
               "package": "packages", "flat_overage": "flat fee + overage"}


@dataclass
class DiffRow:
    what: str
    change: str  # added | removed | changed | same
    old: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

    @property
    def old_only(self) -> set[str]:
        return set(self.old) - set(self.new)

    @property
    def new_only(self) -> set[str]:
        return set(self.new) - set(self.old)


def _n(value: Any) -> str:
    return "-" if value in (None, "") else str(value)


def charge_words(charge: dict[str, Any]) -> list[str]:
    """A charge's terms, one line each (tiers one line per tier), in words."""
    model = charge.get("model", "")
    lines = [f"Model: {MODEL_WORDS.get(model, model)}"]
    if charge.get("name"):
        lines.append(f"Name: {charge['name']}")
    if model in ("graduated", "volume"):
        low = "0"
        for index, tier in enumerate(charge.get("tiers") or []):
            top = tier.get("up_to")
            span = f"above {low}" if top in (None, "") else f"{low} to {top}"
            fee = tier.get("flat_price")
            lines.append(f"Tier {index + 1}: {span} units at {_n(tier.get('unit_price'))} each"
                         + (f" + {fee} flat" if fee not in (None, "", "0") else ""))
            low = _n(top)
    elif model == "per_unit":
        lines.append(f"{_n(charge.get('unit_price'))} per unit")
    elif model == "package":
        lines.append(f"{_n(charge.get('package_price'))} per package of {_n(charge.get('package_size'))} units")
        if charge.get("free_units") not in (None, "", "0"):
            lines.append(f"First {charge['free_units']} units free")
    elif model == "flat_overage":
        lines.append(f"Flat {_n(charge.get('flat_price'))} including {_n(charge.get('included'))} units")
        lines.append(f"{_n(charge.get('overage_unit_price'))} per unit beyond")
    return lines


def _charge_key(charge: dict[str, Any]) -> str:
    filt = charge.get("filter") or {}
    where = f" where {', '.join(f'{k}={v}' for k, v in sorted(filt.items()))}" if filt else ""
    return f"Charge on {charge.get('meter', '?')}{where}"


def _limit_words(limit: dict[str, Any]) -> list[str]:
    return [f"Soft {_n(limit.get('soft'))}", f"Hard {_n(limit.get('hard'))}"]


def _row(what: str, old: list[str] | None, new: list[str] | None) -> DiffRow:
    if old is None:
        return DiffRow(what, "added", [], new or [])
    if new is None:
        return DiffRow(what, "removed", old, [])
    return DiffRow(what, "same" if old == new else "changed", old, new)


def _keyed(rows: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """Rows by key; a second row with the same key is numbered (two charges on one meter and filter)."""
    out: dict[str, list[str]] = {}
    for key, words in rows:
        name, n = key, 1
        while name in out:
            n += 1
            name = f"{key} (#{n})"
        out[name] = words
    return out


def ratecard_diff(old: dict[str, Any] | None, new: dict[str, Any]) -> list[DiffRow]:
    """``new`` against ``old`` (None: nothing in effect, so everything is added)."""
    before = old or {}
    rows = []
    for key, label in (("base_fee", "Base fee"), ("spend_cap", "Spend cap"), ("tax_rate", "Tax rate (%)")):
        if key == "tax_rate" and before.get(key) is None and new.get(key) is None:
            continue  # optional: a row only where a version sets one
        old_value = [_n(before.get(key))] if old is not None else None
        rows.append(_row(label, old_value, [_n(new.get(key))]))
    for kind, key_of, words in (("charges", _charge_key, charge_words),
                                ("limits", lambda x: f"Limit on {x.get('meter', '?')}", _limit_words)):
        olds = _keyed([(key_of(x), words(x)) for x in before.get(kind) or []])
        news = _keyed([(key_of(x), words(x)) for x in new.get(kind) or []])
        for what in [*news, *(k for k in olds if k not in news)]:
            rows.append(_row(what, olds.get(what), news.get(what)))
    return rows
