"""GET /api/v1/audit-log: the contract's shape, its filters, newest first a page at a time, admin only."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from billing.audit.context import acting_as, actor_parse
from billing.audit.models import AuditEntry
from billing.audit.services import audit_record

pytestmark = pytest.mark.django_db


def test_an_entry_has_the_contracts_shape(admin: Any, tokens_meter: Any) -> None:
    response = admin.get("/api/v1/audit-log", {"object_type": "meter"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"data", "next_cursor"} and body["next_cursor"] is None
    [entry] = body["data"]
    assert set(entry) == {"id", "at", "actor", "action", "object_type", "object_id", "before", "after"}
    assert entry["action"] == "meter.created" and entry["object_id"] == str(tokens_meter.pk)
    assert entry["actor"] == {"type": "system", "id": None}
    assert entry["before"] is None and entry["after"]["aggregation"] == "sum" and entry["after"]["key"] == "llm_tokens"
    assert entry["at"].endswith("Z")


def test_the_log_needs_the_admin_scope(make_client: Any) -> None:
    assert make_client("read").get("/api/v1/audit-log").status_code == 403


def test_a_key_restricted_to_one_customer_may_not_read_every_customers_log(make_client: Any, acme: Any,
                                                                         globex: Any) -> None:
    restricted = make_client("admin", customer=globex).get("/api/v1/audit-log")

    assert restricted.status_code == 403 and restricted.json()["error"]["code"] == "forbidden"
    assert "acme" not in restricted.content.decode()
    assert make_client("admin").get("/api/v1/audit-log").status_code == 200


def test_pages_go_newest_first_and_the_cursor_reaches_every_entry_once(admin: Any) -> None:
    AuditEntry.objects.all().delete()
    for n in range(7):
        audit_record(action="thing.created", object_type="thing", object_id=n, after={"n": n})

    seen, cursor = [], ""
    while True:
        body = admin.get("/api/v1/audit-log", {"limit": 3, "cursor": cursor}).json()
        seen += [e["after"]["n"] for e in body["data"]]
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]

    assert seen == [6, 5, 4, 3, 2, 1, 0]
    assert admin.get("/api/v1/audit-log", {"cursor": "nonsense"}).status_code == 422


def test_filters_by_actor_object_and_half_open_time(admin: Any) -> None:
    AuditEntry.objects.all().delete()
    user = get_user_model().objects.create_user(username="ops")
    with acting_as("ops"):
        mine = audit_record(action="plan.created", object_type="plan", object_id=1)
    job = audit_record(action="plan.created", object_type="plan", object_id=2, actor="system:seed_demo")
    key = audit_record(action="customer.created", object_type="customer", object_id=1, actor="api_key:9")
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    for offset, entry in enumerate((mine, job, key)):
        AuditEntry.objects.filter(pk=entry.pk).update(at=t0 + timedelta(hours=offset))

    def ids(**params: Any) -> list[int]:
        response = admin.get("/api/v1/audit-log", params)
        assert response.status_code == 200, response.content
        return [e["id"] for e in response.json()["data"]]

    assert ids(actor=f"user:{user.pk}") == [mine.pk]
    assert ids(actor="system") == [job.pk] and ids(actor="system:seed_demo") == [job.pk]
    assert ids(actor="api_key:9") == [key.pk]
    assert ids(object_type="plan") == [job.pk, mine.pk]
    assert ids(object_type="plan", object_id="2") == [job.pk]
    assert ids(start="2026-03-01T01:00:00Z", end="2026-03-01T02:00:00Z") == [job.pk]
    assert admin.get("/api/v1/audit-log", {"actor": "robot"}).status_code == 422
    assert admin.get("/api/v1/audit-log", {"start": "yesterday"}).status_code == 422


def test_actor_strings_map_to_a_type_and_an_id(db: None) -> None:
    user = get_user_model().objects.create_user(username="ops")

    def pair(text: str) -> tuple[str, str]:
        actor = actor_parse(text)
        return actor.type, actor.id

    assert pair("api_key:12") == ("api_key", "12")
    assert pair("ops") == ("user", str(user.pk)) and actor_parse("ops").label == "ops"
    assert pair("seed_demo") == ("system", "seed_demo")
    assert pair("system") == ("system", "") and pair("") == ("system", "")


def test_an_api_write_is_attributed_to_its_key(admin: Any) -> None:
    response = admin.post("/api/v1/meters", {"key": "gpu_seconds", "name": "GPU", "aggregation": "sum"}, format="json")
    assert response.status_code == 201, response.content

    entry = AuditEntry.objects.get(action="meter.created", after__key="gpu_seconds")
    assert entry.actor_type == "api_key" and entry.actor_id.isdigit()
