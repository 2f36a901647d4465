"""What the rate-card editor shows: each input with its label in words, its value and its problem, and the
summary of problems at the top (each problem once: beside its field, or in the summary when it belongs to
no single field)."""

from __future__ import annotations

import json
import re
from typing import Any

from billing.catalog.schema import ALLOWED
from portal.console.forms import CHARGE_FIELDS, TIERED

MODEL_LABELS = {
    "per_unit": "Per unit: every unit at one price",
    "graduated": "Graduated tiers: each tier's units at that tier's price",
    "volume": "Volume tiers: all units at the price of the tier reached",
    "package": "Packages: a price per started package of units",
    "flat_overage": "Flat fee with units included, then a price per extra unit",
}
PRICE_LABELS = {
    "unit_price": "Price per unit", "package_size": "Units in a package", "package_price": "Price of a package",
    "free_units": "Free units before the first package", "flat_price": "Flat fee for the period",
    "included": "Units included in the flat fee", "overage_unit_price": "Price per unit beyond those included",
}
TIER_LABELS = {"up_to": "Up to (units, inclusive; blank on the last tier)", "unit_price": "Price per unit",
               "flat_price": "Flat fee on reaching the tier"}
OTHER_LABELS = {"base_fee": "Base fee", "spend_cap": "Spend cap", "tax_rate": "Tax rate", "effective_from": "Takes effect",
                "meter": "Meter",
                "model": "Pricing model", "name": "Name on the invoice", "filter": "Only events with",
                "soft": "Soft limit", "hard": "Hard limit", "tiers": "Tiers", "run_limits": "Agent run limits",
                "anomaly": "Anomaly detection", "max_steps": "most steps", "max_spend": "most spend",
                "max_duration_seconds": "longest duration", "window_minutes": "window", "factor": "factor",
                "min_spend": "spend floor", "action": "action"}
_INDEX = re.compile(r"\[(\d+)\]")


def input_name(path: str) -> str:
    """``charges[0].tiers[1].up_to`` -> ``charges-0-tiers-1-up_to`` (the input's name and id)."""
    return _INDEX.sub(r"-\1", path).replace(".", "-")


def path_label(path: str, document: dict[str, Any]) -> str:
    """A problem's place in words: ``Charge 1 (llm_tokens), tier 2: Up to``."""
    parts = [p for p in _INDEX.sub(r".\1", path).split(".") if p]
    words: list[str] = []
    index = 0
    while index < len(parts):
        part = parts[index]
        number = int(parts[index + 1]) if index + 1 < len(parts) and parts[index + 1].isdigit() else None
        if part in ("charges", "limits") and number is not None:
            rows = document.get(part) or []
            meter = rows[number].get("meter", "") if number < len(rows) else ""
            words.append(f"{'Charge' if part == 'charges' else 'Limit'} {number + 1}" + (f" ({meter})" if meter else ""))
            index += 2
        elif part == "tiers" and number is not None:
            words.append(f"tier {number + 1}")
            index += 2
        else:
            label = (TIER_LABELS if "tier" in (words[-1] if words else "") else {}).get(part) \
                or PRICE_LABELS.get(part) or OTHER_LABELS.get(part) or part.replace("_", " ")
            words.append(label)
            index += 1
    return ", ".join(words) or "The rate card"


class _Fields:
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.errors: dict[str, list[str]] = {}
        for path, message in problems:
            self.errors.setdefault(input_name(path), []).append(message)
        self.rendered: set[str] = set()
        self.all: list[dict[str, Any]] = []

    def __call__(self, name: str, label: str, value: Any, **extra: Any) -> dict[str, Any]:
        self.rendered.add(name)
        item = {"name": name, "label": label, "value": "" if value is None else value,
                "error": "; ".join(self.errors.get(name, [])), **extra}
        self.all.append(item)
        return item


def _charge(field: _Fields, ci: int, charge: dict[str, Any], meters: list[tuple[str, str]]) -> dict[str, Any]:
    at = f"charges-{ci}-"
    model = charge.get("model", "")
    filter_text = ", ".join(f"{k}={v}" for k, v in (charge.get("filter") or {}).items())
    tiers = None
    if model in TIERED:
        tiers = [[field(f"{at}tiers-{ti}-{n}", f"Tier {ti + 1}: {TIER_LABELS[n]}", tier.get(n), in_table=True,
                        placeholder="no upper bound" if n == "up_to" else "")
                  for n in ("up_to", "unit_price", "flat_price")] for ti, tier in enumerate(charge.get("tiers") or [])]
    markup = charge.get("markup")
    return {
        "index": ci, "number": ci + 1, "tiers": tiers,
        "markup": json.dumps(markup, sort_keys=True) if isinstance(markup, dict) else (markup or ""),
        "markup_words": ", ".join(f"{k} +{v}%" for k, v in (markup.get("percent") or {}).items())
        + f" (by {markup.get('dimension') or 'provider'}; others +{markup.get('default') or 0}%)"
        if isinstance(markup, dict) else "",
        "meter": field(f"{at}meter", "Meter", charge.get("meter"), choices=meters),
        "model": field(f"{at}model", "Pricing model", model, choices=list(MODEL_LABELS.items()), reshapes=True),
        "name": field(f"{at}name", "Name on the invoice (optional)", charge.get("name")),
        "filter": field(f"{at}filter", "Only events with these dimensions (optional)", filter_text,
                        placeholder="model=gpt-4o, direction=input"),
        "prices": [field(f"{at}{n}", PRICE_LABELS[n], charge.get(n)) for n in CHARGE_FIELDS
                   if n in ALLOWED.get(model, ())],
    }


def editor_form(*, document: dict[str, Any], problems: list[tuple[str, str]], currency: str, effective_from: str,
                meters: list[tuple[str, str]]) -> dict[str, Any]:
    """The editor's inputs and its problem summary, from a draft document and its validation problems."""
    field = _Fields(problems)
    top = [field("base_fee", f"Base fee per period ({currency})", document.get("base_fee")),
           field("spend_cap", f"Spend cap per period ({currency}; blank for none)", document.get("spend_cap")),
           field("tax_rate", "Tax rate (%, 0 to 100; blank for the installation's; a customer's own rate wins)",
                 document.get("tax_rate")),
           field("effective_from", "Takes effect (UTC)", effective_from, type="datetime-local")]
    runs, anomaly = document.get("run_limits") or {}, document.get("anomaly") or {}
    guards = [field("run_limits-max_steps", "Agent run: most steps (billable events)", runs.get("max_steps")),
              field("run_limits-max_spend", f"Agent run: most spend ({currency})", runs.get("max_spend")),
              field("run_limits-max_duration_seconds", "Agent run: longest duration (seconds)",
                    runs.get("max_duration_seconds")),
              field("anomaly-window_minutes", "Anomaly: window (minutes)", anomaly.get("window_minutes")),
              field("anomaly-factor", "Anomaly: times the usual spend rate", anomaly.get("factor")),
              field("anomaly-min_spend", f"Anomaly: ignored below a spend of ({currency})", anomaly.get("min_spend")),
              field("anomaly-action", "Anomaly: then", anomaly.get("action") or "alert",
                    choices=[("alert", "alert"), ("pause", "alert and pause the customer")])]
    charges = [_charge(field, ci, c, meters) for ci, c in enumerate(document.get("charges") or [])]
    limits = [{"index": li, "number": li + 1,
               "meter": field(f"limits-{li}-meter", "Meter", limit.get("meter"), choices=meters),
               "soft": field(f"limits-{li}-soft", "Soft limit: alert from (a quantity or a % of the hard limit)",
                             limit.get("soft")),
               "hard": field(f"limits-{li}-hard", "Hard limit: refuse use above", limit.get("hard"))}
              for li, limit in enumerate(document.get("limits") or [])]
    summary = []
    linked: set[str] = set()
    for path, message in problems:
        name = input_name(path)
        anchor = name if name in field.rendered else ""
        if anchor in linked:  # a field's messages stand together beside it: one link to it is enough
            continue
        if anchor:
            linked.add(anchor)
        summary.append({"label": path_label(path, document), "path": path, "anchor": anchor,
                        "message": "" if anchor else message})
    return {"top": top, "charges": charges, "limits": limits, "summary": summary, "fields": field.all,
            "guards": guards}
