"""The rate-card editor's form <-> a catalog-file plan definition (pure functions, tested)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

FIELD = re.compile(r"^(charges|limits)-(\d+)-(\w+?)(?:-(\d+)-(\w+))?$")
CHARGE_FIELDS = ("unit_price", "package_size", "package_price", "free_units", "flat_price", "included", "overage_unit_price")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def definition_from_form(data: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild a plan definition (catalog-file shape, without key/name/currency) from form fields named
    by path: ``base_fee``, ``spend_cap``, ``charges-0-meter``, ``charges-0-filter`` ("k=v, k=v"),
    ``charges-0-tiers-1-up_to``, ``limits-0-hard``... Blank fields are left out."""
    charges: dict[int, dict[str, Any]] = {}
    limits: dict[int, dict[str, Any]] = {}
    for name, value in data.items():
        match = FIELD.match(name)
        if not match or _blank(value):
            continue
        kind, index, field, sub_index, sub_field = match.groups()
        target = (charges if kind == "charges" else limits).setdefault(int(index), {})
        if sub_index is not None:
            tiers = target.setdefault("_tiers", {})
            tiers.setdefault(int(sub_index), {})[sub_field] = value.strip()
        else:
            target[field] = value.strip()
    draft: dict[str, Any] = {"charges": [], "limits": []}
    for key in ("base_fee", "spend_cap"):
        if not _blank(data.get(key)):
            draft[key] = str(data[key]).strip()
    for _, charge in sorted(charges.items()):
        out: dict[str, Any] = {k: v for k, v in charge.items() if k in ("meter", "model", "name", *CHARGE_FIELDS)}
        if charge.get("filter"):
            pairs = [p.split("=", 1) for p in charge["filter"].split(",") if "=" in p]
            out["filter"] = {k.strip(): v.strip() for k, v in pairs}
        if "_tiers" in charge:
            out["tiers"] = []
            for _, tier in sorted(charge["_tiers"].items()):
                row: dict[str, Any] = {"unit_price": tier.get("unit_price", ""), "up_to": tier.get("up_to") or None}
                if tier.get("flat_price"):
                    row["flat_price"] = tier["flat_price"]
                out["tiers"].append(row)
        draft["charges"].append(out)
    for _, limit in sorted(limits.items()):
        draft["limits"].append({k: v for k, v in limit.items() if k in ("meter", "soft", "hard")})
    return draft


def add_tier(draft: dict[str, Any], charge: int) -> dict[str, Any]:
    """A new last tier; the old last (open) tier gets a bound to be filled in."""
    tiers = draft["charges"][charge].setdefault("tiers", [])
    tiers.append({"up_to": None, "unit_price": tiers[-1]["unit_price"] if tiers else "0"})
    return draft


def remove_tier(draft: dict[str, Any], charge: int, tier: int) -> dict[str, Any]:
    tiers = draft["charges"][charge].get("tiers", [])
    if 0 <= tier < len(tiers) and len(tiers) > 1:
        del tiers[tier]
        tiers[-1]["up_to"] = None
    return draft
