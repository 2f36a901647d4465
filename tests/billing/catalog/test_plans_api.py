from __future__ import annotations

from datetime import datetime, timezone

import pytest

from billing.audit.models import AuditEntry
from billing.catalog.models import RateCardVersion, Subscription

pytestmark = pytest.mark.django_db
PLAN = {
    "key": "starter", "name": "Starter", "currency": "USD", "effective_from": "2026-01-01T00:00:00Z",
    "base_fee": "10.00",
    "charges": [{"meter": "llm_tokens", "model": "volume",
                 "tiers": [{"up_to": 1000, "unit_price": "0.01"}, {"up_to": None, "unit_price": "0.005"}]}],
    "limits": [{"meter": "llm_tokens", "soft": "80%", "hard": 1000000}],
    "spend_cap": "250.00",
}


def test_create_plan_and_list_it(admin, tokens_meter):
    created = admin.post("/api/v1/plans", PLAN, format="json")
    again = admin.post("/api/v1/plans", PLAN, format="json")

    assert created.status_code == 201, created.content
    assert created.json()["version"] == 1
    assert again.status_code == 200
    listed = admin.get("/api/v1/plans").json()["data"]
    assert [(p["key"], p["version"]) for p in listed] == [("starter", 1)]
    assert listed[0]["limits"] == [{"meter": "llm_tokens", "soft": "80%", "hard": "1000000"}]


def test_invalid_plan_is_422_with_paths(admin, tokens_meter):
    bad = {**PLAN, "charges": [{"meter": "llm_tokens", "model": "volume",
                                "tiers": [{"up_to": 1000, "unit_price": "0.01"}, {"up_to": 10, "unit_price": "1"}]}]}

    response = admin.post("/api/v1/plans", bad, format="json")

    assert response.status_code == 422
    assert "charges[0].tiers[1].up_to" in response.json()["error"]["fields"]
    assert not RateCardVersion.objects.exists()


def test_new_version_through_the_api_and_audit(admin, tokens_meter):
    admin.post("/api/v1/plans", PLAN, format="json")

    response = admin.post("/api/v1/plans/starter/versions", {
        "effective_from": "2027-01-01T00:00:00Z", "base_fee": "12.00",
        "charges": PLAN["charges"]}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["version"] == 2 and response.json()["base_fee"] == "12"
    version = RateCardVersion.objects.get(plan__key="starter", number=2)
    entry = AuditEntry.objects.get(action="ratecard.published", object_type="rate_card_version", object_id=str(version.pk))
    assert entry.actor_type == "api_key" and entry.before is None and (entry.after or {})["number"] == 2
    assert admin.post("/api/v1/plans/nope/versions", {}, format="json").status_code == 404


def test_subscription_change_takes_effect_at_the_period_boundary_unless_start_is_given(admin, tokens_meter, acme):
    admin.post("/api/v1/plans", PLAN, format="json")
    admin.post("/api/v1/plans", {**PLAN, "key": "scale", "name": "Scale"}, format="json")

    first = admin.post("/api/v1/customers/acme-co/subscription", {"plan": "starter"}, format="json")
    change = admin.post("/api/v1/customers/acme-co/subscription", {"plan": "scale"}, format="json")

    assert first.status_code == 201 and change.status_code == 201
    now = datetime.now(timezone.utc)
    boundary = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=timezone.utc)
    subs = list(Subscription.objects.order_by("start").values_list("plan__key", "end"))
    assert subs == [("starter", boundary), ("scale", None)]
    immediate = admin.post("/api/v1/customers/acme-co/subscription",
                           {"plan": "starter", "start": now.isoformat()}, format="json")
    assert immediate.status_code == 201
    assert Subscription.objects.get(end__isnull=True).plan.key == "starter"


def test_subscription_to_unknown_plan_is_422(admin, acme):
    assert admin.post("/api/v1/customers/acme-co/subscription", {"plan": "ghost"}, format="json").status_code == 422
