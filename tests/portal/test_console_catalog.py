"""The console's catalog set-up: meters (create, edit what may change) and plans from scratch, each write
audited with the staff user as its actor."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from django.contrib.auth import get_user_model

from billing.audit.models import AuditEntry
from billing.catalog.models import Meter, Plan
from billing.catalog.services import meter_create
from billing.common.auth import Principal
from billing.customers.services import customer_create
from billing.usage.services import events_ingest

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True)
    client.force_login(user)
    return client


def _by_ops(action: str, object_id: str) -> AuditEntry:
    entry = AuditEntry.objects.get(action=action, object_id=object_id)
    assert (entry.actor_type, entry.actor_label) == ("user", "ops")
    return entry


def test_a_meter_is_created_from_the_console_and_audited(staff):
    response = staff.post("/console/meters/", {"key": "api_calls", "name": "API calls", "aggregation": "count",
                                               "unit": "request", "unique_by": ""}, HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    page = response.content.decode()
    assert "<html" not in page and "Meter <code>api_calls</code> created." in page and 'data-meter="api_calls"' in page
    meter = Meter.objects.get(key="api_calls")
    assert (meter.aggregation, meter.unit) == ("count", "request")
    _by_ops("meter.created", str(meter.pk))


def test_a_unique_count_meter_needs_its_dimension_and_says_so_beside_the_field(staff):
    response = staff.post("/console/meters/", {"key": "seats", "name": "Seats", "aggregation": "unique_count",
                                               "unit": "seat", "unique_by": ""})

    page = response.content.decode()
    assert response.status_code == 422
    assert page.count("Required for a unique count") == 1
    assert 'class="field invalid"' in page and "Please correct the 1 field marked below." in page
    assert not Meter.objects.filter(key="seats").exists()
    staff.post("/console/meters/", {"key": "seats", "name": "Seats", "aggregation": "unique_count", "unit": "seat",
                                    "unique_by": "user_id"})
    assert Meter.objects.get(key="seats").unique_by == "user_id"


def test_a_taken_key_or_a_bad_key_is_refused_beside_the_key(staff):
    meter_create(key="api_calls", name="API calls", aggregation="count")

    taken = staff.post("/console/meters/", {"key": "api_calls", "name": "x", "aggregation": "sum", "unit": "unit"})
    bad = staff.post("/console/meters/", {"key": "Bad Key", "name": "x", "aggregation": "sum", "unit": "unit"})

    assert taken.status_code == 409 and "exists" in taken.content.decode()
    assert bad.status_code == 422 and "lowercase letters" in bad.content.decode()
    assert Meter.objects.count() == 1


def test_a_meter_without_events_may_be_redefined(staff):
    meter, _ = meter_create(key="storage", name="Storage", aggregation="sum", unit="GB")

    response = staff.post("/console/meters/storage/", {"name": "Storage used", "aggregation": "max", "unit": "GB",
                                                       "unique_by": ""})

    assert response.status_code == 302
    meter.refresh_from_db()
    assert (meter.name, meter.aggregation) == ("Storage used", "max")
    entry = _by_ops("meter.updated", str(meter.pk))
    assert entry.before is not None and entry.after is not None
    assert (entry.before["aggregation"], entry.after["aggregation"]) == ("sum", "max")


def test_a_meter_with_events_refuses_an_aggregation_change_with_the_models_message(staff):
    meter, _ = meter_create(key="llm_tokens", name="LLM tokens", aggregation="sum", unit="token")
    customer_create(external_id="acme-co", name="Acme")
    events_ingest(principal=Principal(scopes=frozenset({"admin"})), raw_events=[json.dumps({
        "event_id": "e1", "customer": "acme-co", "meter": "llm_tokens", "quantity": "5",
        "timestamp": datetime.now(timezone.utc).isoformat()}).encode()])

    form = staff.get("/console/meters/llm_tokens/").content.decode()
    response = staff.post("/console/meters/llm_tokens/", {"name": "Tokens", "aggregation": "max", "unit": "token",
                                                          "unique_by": ""})

    assert "Fixed: the meter has usage events" in form
    page = response.content.decode()
    assert response.status_code == 422 and "Fixed once the meter has events." in page
    meter.refresh_from_db()
    assert (meter.name, meter.aggregation) == ("LLM tokens", "sum")
    renamed = staff.post("/console/meters/llm_tokens/", {"name": "Tokens", "aggregation": "sum", "unit": "token",
                                                         "unique_by": ""})
    assert renamed.status_code == 302
    meter.refresh_from_db()
    assert meter.name == "Tokens"


def test_a_plan_is_created_from_scratch_and_opens_its_first_draft(staff):
    response = staff.post("/console/plans/new", {"key": "starter", "name": "Starter", "currency": "eur"})

    assert response.status_code == 302 and response["Location"] == "/console/plans/starter/versions/new"
    plan = Plan.objects.get(key="starter")
    assert plan.currency == "EUR" and not plan.versions.exists()
    _by_ops("plan.created", str(plan.pk))
    editor = staff.get(response["Location"])
    assert editor.status_code == 200
    assert "Starter" in staff.get("/console/").content.decode()


def test_a_plan_with_a_taken_key_or_an_unknown_currency_is_refused(staff):
    staff.post("/console/plans/new", {"key": "starter", "name": "Starter", "currency": "USD"})

    taken = staff.post("/console/plans/new", {"key": "starter", "name": "Again", "currency": "USD"})
    money = staff.post("/console/plans/new", {"key": "other", "name": "Other", "currency": "XYZ"})

    assert taken.status_code == 422 and "Plan &#x27;starter&#x27; exists." in taken.content.decode()
    assert money.status_code == 422 and "Unknown or unsupported currency" in money.content.decode()
    assert Plan.objects.count() == 1


def test_customers_and_anonymous_cannot_reach_the_catalog_pages(client):
    for url in ("/console/meters/", "/console/plans/new"):
        assert client.get(url).status_code == 302
    user = get_user_model().objects.create_user("dev", password="pw-123456")
    client.force_login(user)
    assert client.post("/console/meters/", {"key": "x", "aggregation": "sum"}).status_code == 403
    assert client.post("/console/plans/new", {"key": "x", "name": "x", "currency": "USD"}).status_code == 403
    assert not Meter.objects.exists() and not Plan.objects.exists()
