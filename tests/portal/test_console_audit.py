"""The console's audit log page: newest first, filtered by actor, object and time, older pages by cursor."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from billing.audit.models import AuditEntry
from billing.audit.services import audit_record

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client: Any) -> Any:
    client.force_login(get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True))
    return client


def _rows(page: str) -> int:
    return page.count("<tr><td>")


def test_the_page_filters_by_actor_object_and_time(staff: Any) -> None:
    AuditEntry.objects.all().delete()
    first = audit_record(action="customer.created", object_type="customer", object_id=7, after={"external_id": "acme"},
                         actor="api_key:4")
    second = audit_record(action="meter.created", object_type="meter", object_id=3, actor="system:seed_demo")
    AuditEntry.objects.filter(pk=first.pk).update(at=datetime(2026, 3, 1, tzinfo=timezone.utc))
    AuditEntry.objects.filter(pk=second.pk).update(at=datetime(2026, 3, 2, tzinfo=timezone.utc))

    everything = staff.get("/console/audit/").content.decode()
    assert _rows(everything) == 2 and everything.index("meter:3") < everything.index("customer:7")
    by_key = staff.get("/console/audit/", {"actor": "api_key:4"}).content.decode()
    assert "customer:7" in by_key and "meter:3" not in by_key
    by_object = staff.get("/console/audit/", {"object_type": "meter", "object_id": "3"}).content.decode()
    assert "meter:3" in by_object and "customer:7" not in by_object
    by_time = staff.get("/console/audit/", {"start": "2026-03-01T12:00", "end": "2026-03-03T00:00"}).content.decode()
    assert "meter:3" in by_time and "customer:7" not in by_time
    bad = staff.get("/console/audit/", {"actor": "robot"})
    assert bad.status_code == 200 and "actor: Must be one of" in bad.content.decode()


def test_older_entries_are_one_click_away(staff: Any) -> None:
    AuditEntry.objects.all().delete()
    for n in range(60):
        audit_record(action="thing.created", object_type="thing", object_id=n)

    page = staff.get("/console/audit/", {"object_type": "thing"}).content.decode()
    assert _rows(page) == 50 and "thing:59" in page and "Older" in page
    cursor = page.split("cursor=")[1].split('"')[0]
    older = staff.get(f"/console/audit/?object_type=thing&cursor={cursor}").content.decode()
    assert _rows(older) == 10 and "thing:9<" in older and "thing:10<" not in older and "Newest" in older


def test_the_page_is_staff_only(client: Any) -> None:
    client.force_login(get_user_model().objects.create_user("customer-user", password="pw-123456"))
    assert client.get("/console/audit/").status_code in (302, 403)
