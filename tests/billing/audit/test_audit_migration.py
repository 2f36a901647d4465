"""The catalog's audit trail moves into the audit log: each old entry stays readable with its actor split
into type and id, its target into object type and id, its data kept as ``after``, in its old order."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from billing.catalog.models import Plan

BEFORE = [("catalog", "0002_plans_ratecards_subscriptions"), ("audit", "0001_initial")]
AFTER = [("catalog", "0003_audit_entries_moved"), ("usage", "0012_meter_definition_frozen"),
         ("invoicing", "0005_subscription_history_frozen")]


def migrate(targets: list[tuple[str, str]]) -> Any:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_old_entries_are_copied_with_their_actor_and_object(acme: Any) -> None:
    user = get_user_model().objects.create_user("ops")
    plan = Plan.objects.create(key="pro", name="Pro", currency="USD")
    try:
        apps = migrate(BEFORE)
        old = apps.get_model("catalog", "AuditEntry")
        rows = [("ops", "plan.created", "plan:pro", {"currency": "USD"}),
                ("api_key:4", "subscription.set", "customer:acme-co", {"plan": "pro"}),
                ("seed_demo", "catalog.imported", "catalog", {"plans_created": 1}),
                ("system", "invoice.finalized", "invoice:12", {"number": "INV-000001"})]
        for n, (actor, action, target, data) in enumerate(rows):
            entry = old.objects.create(actor=actor, action=action, target=target, data=data)
            old.objects.filter(pk=entry.pk).update(at=datetime(2026, 1, 1 + n, tzinfo=timezone.utc))

        apps = migrate(AFTER)
        moved = list(apps.get_model("audit", "AuditEntry").objects.filter(
            action__in=[r[1] for r in rows]).order_by("id").values(
            "at", "actor_type", "actor_id", "actor_label", "action", "object_type", "object_id", "before", "after"))
    finally:  # every app back at its latest migration: the tests after this one need the whole schema
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    assert [(m["actor_type"], m["actor_id"], m["actor_label"]) for m in moved] == [
        ("user", str(user.pk), "ops"), ("api_key", "4", "api_key:4"), ("system", "seed_demo", "seed_demo"),
        ("system", "", "system")]
    assert [(m["object_type"], m["object_id"]) for m in moved] == [
        ("plan", str(plan.pk)), ("customer", str(acme.pk)), ("catalog", ""), ("invoice", "12")]
    assert [m["at"].day for m in moved] == [1, 2, 3, 4]
    assert moved[0]["before"] is None and moved[0]["after"] == {"currency": "USD", "target": "plan:pro"}
