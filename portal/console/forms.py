"""The rate-card editor's form <-> a catalog-file plan definition, and the editor's row operations
(pure functions, tested)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from billing.catalog.schema import ALLOWED

FIELD = re.compile(r"^(charges|limits)-(\d+)-(\w+?)(?:-(\d+)-(\w+))?$")
CHARGE_FIELDS = ("unit_price", "package_size", "package_price", "free_units", "flat_price", "included", "overage_unit_price")
TIERED = ("graduated", "volume")
NUMBERS = ("base_fee", "spend_cap", "tax_rate")
# the agent-run circuit breakers and the anomaly settings: their fields as the form names them
GROUPS = {"run_limits": ("max_steps", "max_spend", "max_duration_seconds"),
          "anomaly": ("window_minutes", "factor", "min_spend", "action")}
WHOLE = ("max_steps", "max_duration_seconds", "window_minutes")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _charge_out(charge: dict[str, Any]) -> dict[str, Any]:
    """One charge of the form; price fields its model does not use are dropped (a model switched)."""
    model = charge.get("model", "")
    used = ALLOWED.get(model, set(CHARGE_FIELDS) | {"tiers"})
    out: dict[str, Any] = {k: v for k, v in charge.items() if k in ("meter", "model", "name")
                           or (k in CHARGE_FIELDS and k in used)}
    if charge.get("markup"):  # carried as it is (JSON in a hidden field): kept by a new version
        try:
            out["markup"] = json.loads(charge["markup"])
        except ValueError:
            out["markup"] = charge["markup"]  # reported by the catalog's validation
    if charge.get("filter"):
        pairs = [p.split("=", 1) for p in charge["filter"].split(",") if "=" in p]
        out["filter"] = {k.strip(): v.strip() for k, v in pairs}
    if "tiers" in used:
        out["tiers"] = []
        for _, tier in sorted(charge.get("_tiers", {}).items()):
            row: dict[str, Any] = {"unit_price": tier.get("unit_price", ""), "up_to": tier.get("up_to") or None}
            if tier.get("flat_price"):
                row["flat_price"] = tier["flat_price"]
            out["tiers"].append(row)
        if not out["tiers"]:  # switched to a tiered model: one open-ended tier to price
            out["tiers"] = [{"unit_price": "", "up_to": None}]
    return out


def definition_from_form(data: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild a plan definition (catalog-file shape, without key/name/currency) from form fields named
    by path: ``base_fee``, ``spend_cap``, ``charges-0-meter``, ``charges-0-filter`` ("k=v, k=v"),
    ``charges-0-tiers-1-up_to``, ``limits-0-hard``... Blank fields are left out."""
    charges: dict[int, dict[str, Any]] = {}
    limits: dict[int, dict[str, Any]] = {}
    for name, value in data.items():
        match = FIELD.match(name)
        if not match:
            continue
        kind, index, field, sub_index, sub_field = match.groups()
        target = (charges if kind == "charges" else limits).setdefault(int(index), {})
        if _blank(value):
            continue
        if sub_index is not None:
            tiers = target.setdefault("_tiers", {})
            tiers.setdefault(int(sub_index), {})[sub_field] = value.strip()
        else:
            target[field] = value.strip()
    draft: dict[str, Any] = {"charges": [], "limits": []}
    for key in NUMBERS:
        if not _blank(data.get(key)):
            draft[key] = str(data[key]).strip()
    for group, names in GROUPS.items():
        values = {name: str(data[f"{group}-{name}"]).strip() for name in names if not _blank(data.get(f"{group}-{name}"))}
        if values and set(values) != {"action"}:  # an action alone is the select's default, not a setting
            draft[group] = {k: int(v) if k in WHOLE and v.isdigit() else v for k, v in values.items()}
    draft["charges"] = [_charge_out(charge) for _, charge in sorted(charges.items()) if charge]
    for _, limit in sorted(limits.items()):
        if limit:
            draft["limits"].append({k: v for k, v in limit.items() if k in ("meter", "soft", "hard")})
    return draft


def _number(value: Any) -> Decimal | None:
    try:
        number = Decimal(str(value).replace(",", ""))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def number_problems(draft: dict[str, Any]) -> list[tuple[str, str]]:
    """Every amount of the form that is not a number, by path (all at once, where the catalog's parser
    would stop at the first)."""
    problems = []
    checks: list[tuple[str, Any]] = [(key, draft.get(key)) for key in NUMBERS]
    for ci, charge in enumerate(draft.get("charges", [])):
        checks += [(f"charges[{ci}].{name}", charge.get(name)) for name in CHARGE_FIELDS]
        for ti, tier in enumerate(charge.get("tiers") or []):
            checks += [(f"charges[{ci}].tiers[{ti}].{name}", tier.get(name)) for name in ("up_to", "flat_price")]
            if _blank(tier.get("unit_price")):
                problems.append((f"charges[{ci}].tiers[{ti}].unit_price", "required: the price of each unit in this tier"))
            else:
                checks.append((f"charges[{ci}].tiers[{ti}].unit_price", tier.get("unit_price")))
    for li, limit in enumerate(draft.get("limits", [])):
        checks.append((f"limits[{li}].hard", limit.get("hard")))
    for group, names in GROUPS.items():
        for name in names:
            value = (draft.get(group) or {}).get(name)
            if name in WHOLE and isinstance(value, str):
                problems.append((f"{group}.{name}", "enter a whole number"))
            elif name not in WHOLE and name != "action":
                checks.append((f"{group}.{name}", value))
    problems += [(path, "enter a number, such as 0.01") for path, value in checks
                 if not _blank(value) and _number(value) is None]
    return problems


_STEP = re.compile(r"(\w+)|\[(\d+)\]")


def with_placeholders(draft: dict[str, Any], paths: set[str]) -> dict[str, Any]:
    """A copy of ``draft`` with the value at each of ``paths`` (amounts that are not numbers) replaced by 1, so
    that the rest of the draft can still be checked and every problem shown at once."""
    copy = json.loads(json.dumps(draft))
    for path in paths:
        steps = [int(i) if i else name for name, i in _STEP.findall(path)]
        target: Any = copy
        try:
            for step in steps[:-1]:
                target = target[step]
            target[steps[-1]] = 1 if steps[-1] in WHOLE else "1"
        except (KeyError, IndexError, TypeError):
            continue
    return copy


def add_tier(draft: dict[str, Any], charge: int) -> dict[str, Any]:
    """A new tier before the open-ended last one, bounded above the previous bound (twice it, or 1000 when
    there is none) at the last tier's price: the tiers stay valid."""
    tiers = draft["charges"][charge].setdefault("tiers", [])
    if not tiers:
        tiers.append({"up_to": None, "unit_price": "0"})
        return draft
    bounds = [n for t in tiers if (n := _number(t.get("up_to"))) is not None]
    previous = max(bounds, default=Decimal(0))
    bound = previous * 2 if previous > 0 else Decimal(1000)
    tiers.insert(len(tiers) - 1, {"up_to": str(bound), "unit_price": tiers[-1].get("unit_price", "")})
    return draft


def remove_tier(draft: dict[str, Any], charge: int, tier: int) -> dict[str, Any]:
    tiers = draft["charges"][charge].get("tiers", [])
    if 0 <= tier < len(tiers) and len(tiers) > 1:
        del tiers[tier]
        tiers[-1]["up_to"] = None
    return draft


def add_charge(draft: dict[str, Any], meter: str) -> dict[str, Any]:
    """A per-unit charge on ``meter`` (its price still to fill in)."""
    draft["charges"].append({"meter": meter, "model": "per_unit"})
    return draft


def add_limit(draft: dict[str, Any], meter: str) -> dict[str, Any]:
    draft["limits"].append({"meter": meter})
    return draft


def remove_row(draft: dict[str, Any], kind: str, index: int) -> dict[str, Any]:
    rows = draft[kind]
    if 0 <= index < len(rows):
        del rows[index]
    return draft


def apply_action(draft: dict[str, Any], action: str, first_meter: str) -> dict[str, Any]:
    """The editor's buttons: ``add:C``, ``remove:C:T`` (tiers), ``add-charge``, ``remove-charge:C``,
    ``add-limit``, ``remove-limit:L``; anything else leaves the draft as it is."""
    verb, *args = action.split(":")
    try:
        numbers = [int(a) for a in args]
        if verb == "add" and numbers:
            return add_tier(draft, numbers[0])
        if verb == "remove" and len(numbers) == 2:
            return remove_tier(draft, numbers[0], numbers[1])
        if verb == "add-charge":
            return add_charge(draft, first_meter)
        if verb == "add-limit":
            return add_limit(draft, first_meter)
        if verb in ("remove-charge", "remove-limit") and numbers:
            return remove_row(draft, "charges" if verb == "remove-charge" else "limits", numbers[0])
    except (IndexError, ValueError):
        pass
    return draft
