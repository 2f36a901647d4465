"""Budgets: spending ceilings below the customer (contract: "Budgets"), on a project, an API key, one
value of a dimension (an end user of the operator's customer), or a combination; per month or per day;
blocking (``402 budget_exceeded``) or alert-only.

A budget is enforced in the same ledger booking as the customer's quotas and spend cap
(billing.guardrails.limits.plans): one account per budget and period, allocated the budget's amount (a
blocking one) or ``UNLIMITED`` (alert-only: it only counts), debited with the cost of each event in its
scope. Its soft threshold (``soft``, 80% by default) is a soft-limit alert like a quota's
(billing.guardrails.alerts; figures: ``selectors.budget_figures``): one alert and email per budget and
period, and the ``budget.alert`` webhook.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import IntegrityError, transaction

from billing.audit.services import audit_created, audit_deleted, snapshot
from billing.common.errors import CommonCode, DomainError, validation_error
from billing.customers.models import ApiKey, Customer, Project
from billing.guardrails import guards
from billing.guardrails.models import Budget

BUDGET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,59}$")
MAX_BUDGETS_PER_CUSTOMER = 100


def budget_create(*, customer: Customer, budget_id: str, scope: dict[str, Any] | None, amount: Any, period: str,
                  action: str, soft: str | None = None, actor: str = "") -> tuple[Budget, bool]:
    """Create a budget; the same ``budget_id`` with the same body again returns it (False), with another
    body answers 409. In force from the next event."""
    fields = _validated(customer, budget_id, scope or {}, amount, period, action, soft)
    existing = Budget.objects.filter(customer=customer, budget_id=budget_id).first()
    if existing is not None:
        return _same_or_conflict(existing, fields), False
    if Budget.objects.filter(customer=customer).count() >= MAX_BUDGETS_PER_CUSTOMER:
        raise validation_error({"budget_id": [f"At most {MAX_BUDGETS_PER_CUSTOMER} budgets per customer."]})
    try:
        with transaction.atomic():
            budget = Budget.objects.create(customer=customer, budget_id=budget_id, **fields)
            guards.bump([customer.pk])
            audit_created(budget, action="budget.create", actor=actor)
    except IntegrityError:  # created concurrently
        return _same_or_conflict(Budget.objects.get(customer=customer, budget_id=budget_id), fields), False
    return budget, True


def budget_delete(*, customer: Customer, budget_id: str, actor: str = "") -> None:
    with transaction.atomic():
        budget = Budget.objects.select_for_update().filter(customer=customer, budget_id=budget_id).first()
        if budget is None:
            raise DomainError(CommonCode.NOT_FOUND, "No such budget of this customer.")
        audit_deleted(budget, snapshot(budget), action="budget.delete", actor=actor)
        budget.delete()
        guards.bump([customer.pk])


def _same_or_conflict(existing: Budget, fields: dict[str, Any]) -> Budget:
    if any(getattr(existing, k) != v for k, v in fields.items()):
        raise DomainError(CommonCode.IDEMPOTENCY_CONFLICT, "This budget_id exists with another body; delete it first.")
    return existing


def _validated(customer: Customer, budget_id: str, scope: dict[str, Any], amount: Any, period: str, action: str,
               soft: str | None) -> dict[str, Any]:
    """The model's fields, or 422 naming every bad field."""
    errors: dict[str, list[str]] = {}
    if not isinstance(budget_id, str) or not BUDGET_ID.match(budget_id):
        errors["budget_id"] = ["1-60 characters: letters, digits, '.', '_', ':', '-'."]
    value = _decimal(amount)
    if value is None or value <= 0 or value != value.quantize(Decimal("1e-12")):
        errors["amount"] = ["A positive decimal string, at most 12 decimal places."]
    if period not in Budget.Period.values:
        errors["period"] = ["Must be 'month' or 'day'."]
    if action not in Budget.Action.values:
        errors["action"] = ["Must be 'block' or 'alert'."]
    percent = None
    if soft is not None:
        percent = _decimal(str(soft).strip().removesuffix("%")) if isinstance(soft, str | int) else None
        if percent is None or not 0 < percent <= 100 or percent != percent.quantize(Decimal("0.01")):
            errors["soft"] = ["A percentage like \"80%\": above 0, at most 100, 2 decimal places at most."]
    stored = _scope(customer, scope, errors)
    if errors:
        raise validation_error(errors)
    return {"scope": stored, "amount": value, "period": period, "action": action, "soft_percent": percent}


def _scope(customer: Customer, scope: Any, errors: dict[str, list[str]]) -> dict[str, Any]:
    """The scope as stored: what the caller named (shown back) and the pks ingest matches on."""
    if not isinstance(scope, dict) or set(scope) - {"project", "dimension", "api_key"}:
        errors["scope"] = ["An object with any of 'project', 'dimension', 'api_key'."]
        return {}
    stored: dict[str, Any] = {}
    if scope.get("project") is not None:
        project = Project.objects.filter(customer=customer, key=str(scope["project"])).first()
        if project is None:
            errors["scope.project"] = [f"No project '{scope['project']}' of this customer."]
        else:
            stored.update(project=project.key, project_pk=project.pk)
    dimension = scope.get("dimension")
    if dimension is not None:
        if (not isinstance(dimension, dict) or len(dimension) != 1
                or not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in dimension.items())):
            errors["scope.dimension"] = ["One {\"<key>\": \"<value>\"} pair of strings."]
        else:
            stored["dimension"] = dimension
    if scope.get("api_key") is not None:
        key = ApiKey.objects.filter(prefix=str(scope["api_key"])).first()
        if key is None or (key.customer_id is not None and key.customer_id != customer.pk):
            errors["scope.api_key"] = ["No API key with this prefix."]
        else:
            stored.update(api_key=key.prefix, api_key_pk=key.pk)
    return stored


def _decimal(raw: Any) -> Decimal | None:
    if isinstance(raw, float | bool) or raw is None:
        return None
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None
