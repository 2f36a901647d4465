"""The operator's pricing console: staff only, tier editing over HTMX, live validation, simulation, publish."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from django.contrib.auth import get_user_model

from billing.audit.models import AuditEntry
from billing.catalog.models import Plan, RateCardVersion
from billing.catalog.services import catalog_import, subscription_set
from billing.common.auth import Principal
from billing.customers.services import customer_user_create
from billing.usage.services import events_ingest
from portal.console.forms import add_tier, definition_from_form, remove_tier

pytestmark = [pytest.mark.django_db, pytest.mark.ledger]
CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
plans:
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2026-01-01T00:00:00Z"
    base_fee: "10"
    charges:
      - meter: llm_tokens
        model: graduated
        tiers:
          - {up_to: 1000, unit_price: "0.01"}
          - {up_to: null, unit_price: "0.005"}
    limits:
      - {meter: llm_tokens, soft: "80%", hard: 1000000}
"""
FORM = {
    "base_fee": "10", "effective_from": "2030-01-01T00:00",
    "charges-0-meter": "llm_tokens", "charges-0-model": "graduated", "charges-0-filter": "",
    "charges-0-tiers-0-up_to": "1000", "charges-0-tiers-0-unit_price": "0.01",
    "charges-0-tiers-1-up_to": "", "charges-0-tiers-1-unit_price": "0.005",
    "limits-0-meter": "llm_tokens", "limits-0-soft": "80%", "limits-0-hard": "1000000",
}
URLS = ["/console/", "/console/audit/", "/console/plans/pro/", "/console/plans/pro/versions/new"]
POSTS = ["/console/plans/pro/versions/new", "/console/plans/pro/versions/new/tiers",
         "/console/plans/pro/versions/new/validate", "/console/plans/pro/versions/new/simulate"]


@pytest.fixture
def catalog():
    catalog_import(text=CATALOG, actor="t")


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True)
    client.force_login(user)
    return client


def test_form_round_trip_builds_the_definition():
    definition = definition_from_form({**FORM, "charges-0-filter": "model=gpt-4o, direction=input", "spend_cap": ""})

    assert definition == {
        "base_fee": "10",
        "charges": [{"meter": "llm_tokens", "model": "graduated", "filter": {"model": "gpt-4o", "direction": "input"},
                     "tiers": [{"unit_price": "0.01", "up_to": "1000"}, {"unit_price": "0.005", "up_to": None}]}],
        "limits": [{"meter": "llm_tokens", "soft": "80%", "hard": "1000000"}],
    }
    added = add_tier(definition_from_form(FORM), 0)
    # a new tier goes before the open-ended last one, bounded above the previous bound: still valid
    assert [t["up_to"] for t in added["charges"][0]["tiers"]] == ["1000", "2000", None]
    removed = remove_tier(definition_from_form(FORM), 0, 0)
    assert [t["up_to"] for t in removed["charges"][0]["tiers"]] == [None]


def test_staff_see_meters_and_plans(staff, catalog):
    page = staff.get("/console/").content.decode()

    assert "llm_tokens" in page and "Pro" in page and "v1" in page
    assert staff.get("/console/plans/pro/versions/new").status_code == 200


def test_customer_user_gets_403_everywhere_and_anonymous_is_sent_to_login(client, catalog, acme):
    for url in URLS:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url
    customer_user_create(customer=acme, username="dev", password="pw-123456")
    client.login(username="dev", password="pw-123456")
    for url in URLS:
        assert client.get(url).status_code == 403, url
    for url in POSTS:
        assert client.post(url, FORM).status_code == 403, url
    assert RateCardVersion.objects.count() == 1


def test_tier_rows_are_added_and_removed_inline(staff, catalog):
    added = staff.post("/console/plans/pro/versions/new/tiers", {**FORM, "tier_action": "add:0"}, HTTP_HX_REQUEST="true")
    removed = staff.post("/console/plans/pro/versions/new/tiers", {**FORM, "tier_action": "remove:0:1"},
                         HTTP_HX_REQUEST="true")

    assert added.status_code == 200
    assert added.content.decode().count('class="tier"') == 3
    assert "<html" not in added.content.decode()  # a partial, not the page
    assert removed.content.decode().count('class="tier"') == 1


def test_live_validation_names_the_offending_path(staff, catalog):
    response = staff.post("/console/plans/pro/versions/new/validate", {**FORM, "charges-0-tiers-0-up_to": "0"})
    decreasing = staff.post("/console/plans/pro/versions/new/validate",
                            {**FORM, "charges-0-tiers-1-up_to": "500", "charges-0-tiers-2-unit_price": "0.001"})
    fine = staff.post("/console/plans/pro/versions/new/validate", FORM)

    assert "charges[0].tiers[0].up_to" in response.content.decode()
    assert "charges[0].tiers[1].up_to" in decreasing.content.decode()
    assert "No problems found" in fine.content.decode()


def test_simulation_shows_current_and_draft_totals_without_saving(staff, catalog, acme):
    now = datetime.now(timezone.utc)
    subscription_set(customer=acme, plan=Plan.objects.get(key="pro"), start=now - timedelta(days=40), now=now, actor="t")
    events_ingest(principal=Principal(scopes=frozenset({"admin"})), raw_events=[json.dumps({
        "event_id": "e1", "customer": "acme-co", "meter": "llm_tokens", "quantity": "2000",
        "timestamp": (now - timedelta(seconds=5)).isoformat()}).encode()])

    response = staff.post("/console/plans/pro/versions/new/simulate", {**FORM, "base_fee": "20"})

    page = response.content.decode()
    # current: 10 + 1000 x 0.01 + 1000 x 0.005 = 25.00; draft with base fee 20: 35.00
    assert "acme-co" in page and "25.00 USD" in page and "35.00 USD" in page and "10.00" in page
    assert RateCardVersion.objects.count() == 1


def test_publish_creates_a_version_with_the_effective_date_and_an_audit_entry(staff, catalog):
    response = staff.post("/console/plans/pro/versions/new", {**FORM, "base_fee": "12.50"})

    assert response.status_code == 302
    version = RateCardVersion.objects.get(number=2)
    assert version.effective_from == datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert version.definition["base_fee"] == "12.5"
    entry = AuditEntry.objects.get(action="ratecard.published", object_type="rate_card_version",
                                   object_id=str(version.pk))
    assert (entry.actor_type, entry.actor_label) == ("user", "ops")
    assert f"rate_card_version:{version.pk}" in staff.get("/console/audit/").content.decode()


def test_invalid_publish_creates_nothing(staff, catalog):
    response = staff.post("/console/plans/pro/versions/new", {**FORM, "charges-0-tiers-0-unit_price": "-1"})

    assert response.status_code == 422
    assert "charges[0].tiers[0].unit_price" in response.content.decode()
    assert RateCardVersion.objects.count() == 1


def test_the_plan_list_reads_a_fixed_number_of_queries_whatever_the_number_of_plans(staff, catalog, acme):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert staff.get("/console/").status_code == 200
        return len(captured)

    # given one plan with a subscriber
    subscription_set(customer=acme, plan=Plan.objects.get(key="pro"), start=datetime(2026, 1, 1, tzinfo=timezone.utc),
                     now=datetime.now(timezone.utc), actor="t")
    one = queries()
    # when four more plans (each with a version) are listed
    for n in range(4):
        catalog_import(text=CATALOG.replace("key: pro", f"key: pro{n}"), actor="t")
    # then the page reads as many queries as with one, and counts the subscriber
    assert queries() == one
    page = staff.get("/console/").content.decode()
    assert page.count("<td>1</td>") == 1 and page.count("<td>0</td>") == 4


@pytest.mark.django_db
def test_an_unknown_plan_or_invoice_is_a_404_page(staff):
    assert staff.get("/console/plans/no-such-plan/").status_code == 404
    assert staff.post("/console/invoices/999999/stripe-retry").status_code == 404
