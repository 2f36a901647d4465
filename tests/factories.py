"""Shared test builders: usage events, ingest, catalogs and subscriptions, one home for what tests used to
copy. Catalog builders return catalog-file text (JSON, which the YAML importer reads as it is)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from billing.catalog.models import Plan
from billing.catalog.services import catalog_import, subscription_set
from billing.common.auth import Principal
from billing.usage.services import events_ingest

ADMIN = Principal(scopes=frozenset({"admin"}))

TOKENS = {"key": "llm_tokens", "name": "LLM tokens", "unit": "token", "aggregation": "sum"}
CALLS = {"key": "api_calls", "name": "API calls", "unit": "call", "aggregation": "count"}


def event(event_id: str, at: datetime | str, quantity: str | None = "1", meter: str = "llm_tokens", *,
          customer: str = "acme-co", dimensions: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """One usage event's body (``quantity=None`` leaves it out, as a count meter allows)."""
    body: dict[str, Any] = {"event_id": event_id, "customer": customer, "meter": meter,
                            "timestamp": at if isinstance(at, str) else at.isoformat(), **extra}
    if quantity is not None:
        body["quantity"] = quantity
    if dimensions is not None:
        body["dimensions"] = dimensions
    return body


def ingest(*events: dict[str, Any], now: datetime | None = None, principal: Principal = ADMIN) -> list[dict[str, Any]]:
    """Ingest ``events`` as one batch through the service; each result as its JSON body."""
    results = events_ingest(principal=principal, raw_events=[json.dumps(e).encode() for e in events], now=now)
    return [r.as_dict() for r in results]


def send(*events: dict[str, Any], now: datetime | None = None) -> None:
    """``ingest``, asserting that every event was accepted."""
    results = ingest(*events, now=now)
    assert all(r["status"] == "accepted" for r in results), results


def plan(key: str, charges: list[dict[str, Any]], *, name: str | None = None, currency: str = "USD",
         effective_from: str = "2026-01-01T00:00:00Z", **terms: Any) -> dict[str, Any]:
    """One plan version of a catalog (``terms``: base_fee, limits, spend_cap, ...)."""
    return {"key": key, "name": name or key.title(), "currency": currency, "effective_from": effective_from,
            "charges": charges, **terms}


def catalog(*plans: dict[str, Any], meters: tuple[dict[str, Any], ...] = (TOKENS,)) -> str:
    return json.dumps({"meters": list(meters), "plans": list(plans)})


def subscribe(customer: Any, plan_key: str, *, start: datetime, now: datetime | None = None,
              catalog_text: str | None = None) -> Any:
    """Subscribe ``customer`` to the plan ``plan_key`` from ``start`` (importing ``catalog_text`` first)."""
    if catalog_text is not None:
        catalog_import(text=catalog_text, actor="t")
    return subscription_set(customer=customer, plan=Plan.objects.get(key=plan_key), start=start, now=now or start,
                            actor="t")


def metered(*, price: str = "0.01", hard: str | None = None, soft: str | None = None, cap: str | None = None,
            meter: dict[str, Any] = TOKENS, extra_meters: tuple[dict[str, Any], ...] = (),
            tiers: list[dict[str, Any]] | None = None) -> str:
    """The catalog most limit tests need: plan ``metered``, one per-unit charge on ``meter`` at ``price``
    (or graduated over ``tiers``), optionally a hard limit (with a soft one) on it and a spend cap."""
    terms: dict[str, Any] = {}
    if hard is not None:
        terms["limits"] = [{"meter": meter["key"], "hard": hard, **({"soft": soft} if soft is not None else {})}]
    if cap is not None:
        terms["spend_cap"] = cap
    charge: dict[str, Any] = ({"meter": meter["key"], "model": "per_unit", "unit_price": price} if tiers is None
                              else {"meter": meter["key"], "model": "graduated", "tiers": tiers})
    return catalog(plan("metered", [charge], **terms), meters=(meter, *extra_meters))
