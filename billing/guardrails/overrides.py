"""Customer overrides (contract: "Customer overrides"): terms that replace the plan's for one customer,
from the next event on. A limit per meter replaces the plan's limit of that meter (a meter the plan does
not limit gets one), ``spend_cap`` replaces the cap (``null`` removes it; absent keeps the plan's),
``run_limits`` and ``anomaly`` replace the plan's when present. Validated like the catalog file.

Ingest reads the override with the customer's guard state (billing.guardrails.guards), and the limits'
allocations follow it at once (billing.guardrails.accounts.follow): an upgrade raises what remains, a
downgrade below current use refuses further use.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from django.db import transaction

from billing.audit.services import audit_record, snapshot
from billing.catalog import schema
from billing.catalog.models import Meter
from billing.common.errors import validation_error
from billing.customers.models import Customer
from billing.guardrails import guards
from billing.guardrails.models import CustomerOverride


class OverrideIn(msgspec.Struct, forbid_unknown_fields=True):
    limits: list[schema.LimitIn] = []
    spend_cap: Decimal | msgspec.UnsetType | None = msgspec.UNSET
    run_limits: schema.RunLimitsIn | None = None
    anomaly: schema.AnomalyIn | None = None


def override_put(*, customer: Customer, data: Any, actor: str = "") -> CustomerOverride:
    """Replace the customer's override with ``data`` (the whole of it); in force from the next event."""
    terms = override_validate(data)
    with transaction.atomic():
        row = CustomerOverride.objects.select_for_update().filter(customer=customer).first()
        before = snapshot(row)
        if row is None:
            row = CustomerOverride.objects.create(customer=customer, terms=terms)
        elif row.terms != terms:
            row.terms, row.revision = terms, row.revision + 1
            row.save(update_fields=["terms", "revision", "updated_at"])
        else:
            return row
        guards.bump([customer.pk])
        audit_record(actor=actor, action="override.put", obj=row, before=before, after=snapshot(row))
    return row


def override_get(*, customer: Customer) -> dict[str, Any]:
    row = CustomerOverride.objects.filter(customer=customer).first()
    terms = row.terms if row is not None else {}
    return {"customer": customer.external_id, "revision": row.revision if row is not None else 0,
            "limits": terms.get("limits", []), **{k: terms[k] for k in ("spend_cap", "run_limits", "anomaly")
                                                  if k in terms},
            "updated_at": row.updated_at if row is not None else None}


def override_validate(data: Any) -> dict[str, Any]:
    """The override's canonical terms (the catalog's shapes), or 422 naming each problem by path."""
    try:
        entry = msgspec.convert(data if data is not None else {}, OverrideIn, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error({schema.problem_path(exc)[0] or "body": [str(exc)]}) from None
    problems: list[tuple[str, str]] = []
    meters = set(Meter.objects.values_list("key", flat=True))
    terms: dict[str, Any] = {"limits": schema.validate_limits(entry.limits, "", meters, problems)}
    if entry.spend_cap is not msgspec.UNSET:
        if entry.spend_cap is not None:
            schema.check_amount(problems, "spend_cap", entry.spend_cap, positive=True)
        terms["spend_cap"] = schema.dec_text(entry.spend_cap)
    if entry.run_limits is not None:
        terms["run_limits"] = schema.validate_run_limits(entry.run_limits, "run_limits", problems)
    if entry.anomaly is not None:
        terms["anomaly"] = schema.validate_anomaly(entry.anomaly, "anomaly", problems)
    if problems:
        fields: dict[str, list[str]] = {}
        for path, message in problems:
            fields.setdefault(path.lstrip("."), []).append(message)
        raise validation_error(fields)
    return terms
