"""Every write through the API lands in the audit log, attributed to the key that made it, with the
object's state after (and before, for a change); a job's writes are the system's, named after the job."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import transaction

from billing.audit.context import acting_as, job_finished, job_started
from billing.audit.models import AuditEntry
from billing.catalog.services import meter_create
from billing.customers.models import Customer
from billing.customers.services import customer_create

pytestmark = [pytest.mark.django_db, pytest.mark.ledger]
PLAN = {"key": "pro", "name": "Pro", "currency": "USD", "effective_from": "2026-01-01T00:00:00Z", "base_fee": "10.00",
        "charges": [{"meter": "llm_tokens", "model": "per_unit", "unit_price": "0.01"}]}


def _ok(response: Any) -> Any:
    assert response.status_code in (200, 201, 202, 204), response.content
    return response.json() if response.content else None


def test_each_kind_of_write_through_the_api_is_audited_with_its_key(admin: Any) -> None:
    AuditEntry.objects.all().delete()
    base = "/api/v1/customers/acme-co"
    _ok(admin.post("/api/v1/meters", {"key": "llm_tokens", "name": "Tokens", "aggregation": "sum"}, format="json"))
    _ok(admin.post("/api/v1/customers", {"id": "acme-co", "name": "Acme"}, format="json"))
    _ok(admin.patch(base, {"email": "ap@acme.example"}, format="json"))
    _ok(admin.post(f"{base}/projects", {"id": "bot"}, format="json"))
    _ok(admin.post("/api/v1/plans", PLAN, format="json"))
    _ok(admin.post("/api/v1/plans/pro/versions", {"effective_from": "2031-01-01T00:00:00Z", "base_fee": "12.00",
                                                  "charges": PLAN["charges"]}, format="json"))
    _ok(admin.post(f"{base}/subscription", {"plan": "pro"}, format="json"))
    _ok(admin.post(f"{base}/credits", {"amount": "25.00", "idempotency_key": "g1", "reason": "welcome"}, format="json"))
    _ok(admin.post(f"{base}/alert-thresholds", {"target": "meter:llm_tokens", "percent": "50"}, format="json"))
    _ok(admin.delete(f"{base}/alert-thresholds?target=meter:llm_tokens&percent=50"))
    _ok(admin.put(f"{base}/overrides", {"spend_cap": "100.00"}, format="json"))
    pause = _ok(admin.post(f"{base}/pauses", {"scope": "customer", "reason": "audit"}, format="json"))
    _ok(admin.delete(f"{base}/pauses/{pause['pause_id']}"))
    _ok(admin.post(f"{base}/budgets", {"budget_id": "b1", "amount": "50.00"}, format="json"))
    _ok(admin.delete(f"{base}/budgets/b1"))
    _ok(admin.post(f"{base}/runs/r1/kill"))
    _ok(admin.post(f"{base}/runs/r1/release"))
    endpoint = _ok(admin.post("/api/v1/webhook-endpoints", {"url": "https://ops.example/hook",
                                                           "events": ["invoice.finalized"]}, format="json"))
    _ok(admin.delete(f"/api/v1/webhook-endpoints/{endpoint['id']}"))

    entries = list(AuditEntry.objects.order_by("id"))
    key_id = entries[0].actor_id
    assert {(e.actor_type, e.actor_id) for e in entries} == {("api_key", key_id)}
    assert [e.action for e in entries] == [
        "meter.created", "customer.created", "customer.updated", "project.created", "plan.created",
        "ratecard.published", "ratecard.published", "subscription.created", "credits.granted",
        "alert_threshold.created", "alert_threshold.deleted", "override.put", "pause.create", "pause.lift",
        "budget.create", "budget.delete", "run.killed", "run.open", "webhook_endpoint.created",
        "webhook_endpoint.deleted"]
    by_action = {e.action: e for e in entries}
    updated = by_action["customer.updated"]
    assert (updated.before or {})["email"] == "" and (updated.after or {})["email"] == "ap@acme.example"
    assert Decimal((by_action["credits.granted"].after or {})["amount"]) == Decimal("25")
    assert by_action["budget.delete"].after is None and (by_action["budget.delete"].before or {})["budget_id"] == "b1"
    assert "secret" not in (by_action["webhook_endpoint.created"].after or {})
    assert (by_action["webhook_endpoint.deleted"].after or {})["deleted_at"] is not None


def test_a_change_that_fails_leaves_no_entry(admin: Any, acme: Customer) -> None:
    before = AuditEntry.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        customer_create(external_id="initech", name="Initech")
        raise RuntimeError("the change rolls back")
    assert AuditEntry.objects.count() == before and not Customer.objects.filter(external_id="initech").exists()


def test_jobs_and_commands_write_as_the_system(acme: Any) -> None:
    with acting_as("system:seed_demo"):
        meter_create(key="gpu_seconds", name="GPU", aggregation="sum")
    task = SimpleNamespace(name="invoicing.close_periods")
    job_started(task_id="t1", task=task)  # what Celery's task_prerun does for each job
    try:
        meter_create(key="web_searches", name="Searches", aggregation="count")
    finally:
        job_finished(task_id="t1")
    meter_create(key="api_calls", name="Calls", aggregation="count")

    actors = dict(AuditEntry.objects.filter(action="meter.created").values_list("after__key", "actor_id"))
    assert actors == {"gpu_seconds": "seed_demo", "web_searches": "invoicing.close_periods", "api_calls": ""}
    assert AuditEntry.objects.get(action="customer.created").actor_type == "system"
