"""Reads behind the console's guardrails page: one customer's override beside its plan's terms, its active
pauses (an anomaly's too), budgets with their figures and stopped runs. Nothing here writes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billing.catalog.selectors import meter_list, subscription_at, version_in_effect
from billing.customers.models import Customer
from billing.customers.selectors import customers_by_external_id
from billing.guardrails.overrides import override_get
from portal.dashboard import selectors as dashboard


def plan_terms(*, customer: Customer, now: datetime) -> dict[str, Any]:
    """The terms of the plan version in effect (catalog-file shape), without the override: what an empty
    group of the override leaves in force. Empty without a plan."""
    subscription = subscription_at(customer=customer, at=now)
    version = version_in_effect(plan=subscription.plan, at=now) if subscription else None
    if version is None or subscription is None:
        return {}
    return {**version.rate_card.as_definition(), "plan": subscription.plan.key, "currency": subscription.plan.currency,
            "version": version.number}


def guardrails_page(*, customer: Customer, now: datetime) -> dict[str, Any]:
    return {"override": override_get(customer=customer), "plan": plan_terms(customer=customer, now=now),
            "meters": meter_choices(),
            "pauses": dashboard.pauses_active(customer=customer),
            "budgets": dashboard.budgets_shown(customer=customer, now=now),
            "scope_choices": dashboard.budget_scope_choices(customer=customer),
            "stopped": dashboard.runs_stopped(customer=customer)}


def meter_choices() -> list[tuple[str, str]]:
    """(key, name) of every meter: one row of limits each in the override editor."""
    return [(m.key, m.name) for m in meter_list().order_by("key")]


def customers_listed() -> list[Customer]:
    """Every customer, by id, for the console's index (each links to its guardrails)."""
    return list(customers_by_external_id())
