"""Reads behind the console's guardrails page: one customer's override beside its plan's terms, its active
pauses (an anomaly's too), budgets with their figures and stopped runs. Nothing here writes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.paginator import Paginator
from django.db.models import Q

from billing.catalog.models import Subscription
from billing.catalog.selectors import meter_list, plan_list, subscription_at, version_in_effect
from billing.customers.models import ApiKey, Customer, CustomerUser
from billing.customers.selectors import customers_by_external_id, project_list
from billing.guardrails.models import CreditGrant
from billing.guardrails.overrides import override_get
from billing.guardrails.selectors import customer_balance
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


def customer_page(*, customer: Customer, now: datetime) -> dict[str, Any]:
    """Everything the console's page of one customer shows: its plans over time (the one in effect marked),
    credit grants and what remains, projects, dashboard users and API keys (revoked ones too, marked)."""
    subscriptions = list(Subscription.objects.filter(customer=customer).select_related("plan").order_by("start"))
    current = next((s for s in subscriptions if s.start <= now and (s.end is None or s.end > now)), None)
    balance = customer_balance(customer=customer, now=now)
    return {
        "now": now, "subscriptions": subscriptions, "current_subscription": current,
        "plans": [(p.key, f"{p.name} ({p.currency})") for p in plan_list()],
        "grants": list(CreditGrant.objects.filter(customer=customer).order_by("-created_at")),
        "credits": balance["credits"],
        "currency": current.plan.currency if current else "",
        "projects": list(project_list(customer=customer)),
        "users": list(CustomerUser.objects.filter(customer=customer).select_related("user").order_by("user__username")),
        "keys": list(ApiKey.objects.filter(customer=customer).order_by("revoked_at", "-created_at")),
    }


CUSTOMERS_PER_PAGE = 50


def customers_overview(*, now: datetime, page: Any = 1, per_page: int = CUSTOMERS_PER_PAGE) -> dict[str, Any]:
    """One page of customers by id with the plan each is on now (one query for the page's plans), the total
    count and the page's place. A page number out of range or not a number gives the nearest page."""
    paged = Paginator(customers_by_external_id(), per_page).get_page(page)
    ids = [c.pk for c in paged.object_list]
    live = {s.customer_id: s for s in Subscription.objects.filter(Q(end__isnull=True) | Q(end__gt=now), start__lte=now,
                                                                  customer_id__in=ids).select_related("plan")}
    return {"rows": [{"customer": c, "subscription": live.get(c.pk)} for c in paged.object_list], "page": paged,
            "count": paged.paginator.count}


def operator_keys() -> list[ApiKey]:
    """The operator's own API keys (no customer): working first, newest first."""
    return list(ApiKey.objects.filter(customer__isnull=True).order_by("revoked_at", "-created_at"))


def customer_user(*, customer: Customer, user_id: int) -> CustomerUser | None:
    return CustomerUser.objects.filter(customer=customer, user_id=user_id).select_related("user").first()


def customer_key(*, customer: Customer | None, prefix: str) -> ApiKey | None:
    """One key by its prefix: the customer's, or with None one of the operator's own (no customer)."""
    return ApiKey.objects.filter(customer=customer, prefix=prefix).first()
