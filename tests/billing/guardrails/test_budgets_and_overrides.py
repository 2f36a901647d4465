"""Budgets (per end user, project, API key; monthly or daily; blocking or alert-only; a soft alert once per
period) and customer overrides; limits that follow the terms at once, mid-period, with the balance
reporting what is enforced. On both ways of booking."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from django.core import mail

from billing.catalog.models import Plan
from billing.catalog.services import subscription_set
from billing.customers.models import ApiKey
from billing.guardrails.alerts import alerts_check
from billing.guardrails.models import Alert
from tests import factories
from tests.conftest import post_json

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
AT = datetime.now(timezone.utc) - timedelta(seconds=5)
pytestmark = [pytest.mark.usefixtures("debit_mode"), pytest.mark.ledger, pytest.mark.django_db]


def subscribe(customer: Any, *, hard: str | None = None, cap: str | None = None, price: str = "0.01") -> None:
    factories.subscribe(customer, "metered", start=START, now=datetime.now(timezone.utc),
                        catalog_text=factories.metered(price=price, hard=hard, cap=cap))


def ev(event_id: str, quantity: str = "1", user: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": event_id, "customer": "acme-co", "meter": "llm_tokens", "quantity": quantity,
                            "timestamp": AT.isoformat(), **extra}
    if user is not None:
        body["dimensions"] = {"end_user": user}
    return body


def send(client: Any, *events: dict[str, Any]) -> list[str]:
    response = post_json(client, "/api/v1/events/batch", {"events": list(events)})
    assert response.status_code in (200, 207), response.content
    return [r["error"]["code"] if r.get("error") else r["status"] for r in response.json()["results"]]


def budget(client: Any, **body: Any) -> Any:
    return post_json(client, "/api/v1/customers/acme-co/budgets", body)


def put_override(client: Any, terms: dict[str, Any]) -> Any:
    return client.put("/api/v1/customers/acme-co/overrides", data=json.dumps(terms), content_type="application/json")


def test_an_end_user_budget_blocks_that_user_exactly_and_no_one_else(acme, admin):
    subscribe(acme)
    created = budget(admin, budget_id="u42", scope={"dimension": {"end_user": "u-42"}}, amount="0.10")
    assert created.status_code == 201, created.content
    assert created.json()["used"] == "0" and created.json()["remaining"] == "0.1"

    statuses = send(admin, *(ev(f"a{i}", user="u-42") for i in range(12)), ev("b", user="u-7"), ev("c"))
    over = post_json(admin, "/api/v1/events", ev("a12", user="u-42"))

    assert statuses == ["accepted"] * 10 + ["budget_exceeded"] * 2 + ["accepted", "accepted"]
    assert over.status_code == 402
    assert (over.json()["error"]["code"], over.json()["error"]["budget"]) == ("budget_exceeded", "u42")
    listed = admin.get("/api/v1/customers/acme-co/budgets").json()["data"]
    assert [(b["budget_id"], b["used"], b["remaining"], b["action"]) for b in listed] == [("u42", "0.1", "0", "block")]


def test_project_and_api_key_budgets(acme, admin, make_client):
    subscribe(acme)
    assert post_json(admin, "/api/v1/customers/acme-co/projects", {"id": "bot"}).status_code == 201
    app = make_client("ingest", customer=acme)
    key = ApiKey.objects.filter(customer=acme, scope="ingest").get()
    assert budget(admin, budget_id="bot", scope={"project": "bot"}, amount="0.02").status_code == 201
    assert budget(admin, budget_id="app", scope={"api_key": key.prefix}, amount="0.03").status_code == 201

    assert send(admin, *(ev(f"p{i}", project="bot") for i in range(3))) == ["accepted"] * 2 + ["budget_exceeded"]
    assert send(app, *(ev(f"k{i}") for i in range(4))) == ["accepted"] * 3 + ["budget_exceeded"]
    assert send(admin, ev("free")) == ["accepted"]


def test_an_alert_only_budget_never_refuses_and_alerts_once_per_period(acme, admin, settings, celery_eager):
    subscribe(acme)
    acme.email = "ops@acme.test"
    acme.save()
    created = budget(admin, budget_id="soft", amount="0.05", action="alert", soft="60%")
    assert created.json()["soft"] == "60%"

    assert send(admin, *(ev(f"a{i}") for i in range(8))) == ["accepted"] * 8
    alerts_check(customer_pk=acme.pk)
    alerts_check(customer_pk=acme.pk)

    alerts = sorted(Alert.objects.filter(customer=acme).values_list("target", "percent"), key=lambda a: a[1])
    assert alerts == [("budget:soft", Decimal(60)), ("budget:soft", Decimal(100))]
    subjects = sorted(m.subject for m in mail.outbox)
    assert len(subjects) == 2 and all("budget soft" in s for s in subjects)
    assert admin.get("/api/v1/customers/acme-co/budgets").json()["data"][0]["used"] == "0.08"


def test_a_daily_budget_counts_today_only(acme, admin):
    subscribe(acme)
    assert budget(admin, budget_id="day", amount="0.02", period="day").status_code == 201
    yesterday = (AT - timedelta(days=1)).isoformat()
    assert send(admin, *(ev(f"y{i}", timestamp=yesterday) for i in range(3))) == ["accepted"] * 2 + ["budget_exceeded"]
    assert send(admin, *(ev(f"t{i}") for i in range(3))) == ["accepted"] * 2 + ["budget_exceeded"]


def test_budget_validation_idempotency_and_delete(acme, globex, admin, make_client):
    subscribe(acme)
    bad = budget(admin, budget_id="", scope={"project": "nope", "colour": 1}, amount="-1", period="week",
                 action="stop", soft="120%")
    assert bad.status_code == 422
    assert {"budget_id", "amount", "period", "action", "soft", "scope"} <= set(bad.json()["error"]["fields"])
    assert budget(admin, budget_id="b", amount="1").status_code == 201
    assert budget(admin, budget_id="b", amount="1").status_code == 200
    assert budget(admin, budget_id="b", amount="2").status_code == 409
    own = make_client("read", customer=acme)
    assert budget(own, budget_id="mine", amount="3").status_code == 201
    theirs = make_client("read", customer=globex)
    assert theirs.get("/api/v1/customers/acme-co/budgets").status_code == 404
    assert own.delete("/api/v1/customers/acme-co/budgets/b").status_code == 204
    assert own.delete("/api/v1/customers/acme-co/budgets/b").status_code == 404
    assert [b["budget_id"] for b in admin.get("/api/v1/customers/acme-co/budgets").json()["data"]] == ["mine"]


def test_an_override_downgrade_and_upgrade_apply_to_the_next_event(acme, admin, make_client):
    subscribe(acme, hard="1000")
    assert send(admin, ev("a", "900")) == ["accepted"]

    down = put_override(admin, {"limits": [{"meter": "llm_tokens", "hard": "500"}]})
    assert down.status_code == 200 and down.json()["revision"] == 1
    assert post_json(admin, "/api/v1/events", ev("b")).json()["error"]["code"] == "quota_exceeded"
    quota = admin.get("/api/v1/customers/acme-co/balance").json()["quotas"][0]
    assert (quota["limit"], quota["used"], quota["remaining"]) == ("500", "900", "0")

    up = put_override(admin, {"limits": [{"meter": "llm_tokens", "hard": "5000", "soft": "80%"}]})
    assert up.json()["revision"] == 2
    assert send(admin, ev("c", "4000"), ev("d", "101")) == ["accepted", "quota_exceeded"]
    quota = admin.get("/api/v1/customers/acme-co/balance").json()["quotas"][0]
    assert (quota["limit"], quota["used"], quota["remaining"], quota["soft_limit"]) == ("5000", "4900", "100", "4000")
    assert admin.get("/api/v1/customers/acme-co/overrides").json()["limits"] == [
        {"meter": "llm_tokens", "soft": "80%", "hard": "5000"}]
    assert make_client("read", customer=acme).put("/api/v1/customers/acme-co/overrides", data="{}",
                                                  content_type="application/json").status_code == 403


def test_an_override_sets_and_removes_the_spend_cap(acme, admin):
    subscribe(acme, cap="0.03")
    assert send(admin, *(ev(f"a{i}") for i in range(4))) == ["accepted"] * 3 + ["spend_cap_exceeded"]
    assert put_override(admin, {"spend_cap": "0.05"}).status_code == 200
    assert send(admin, *(ev(f"b{i}") for i in range(3))) == ["accepted"] * 2 + ["spend_cap_exceeded"]
    assert admin.get("/api/v1/customers/acme-co/balance").json()["spend_cap"]["cap"] == "0.05"
    assert put_override(admin, {"spend_cap": None}).status_code == 200
    assert send(admin, ev("c")) == ["accepted"]
    assert admin.get("/api/v1/customers/acme-co/balance").json()["spend_cap"] is None


def test_an_override_is_validated_like_the_catalog(acme, admin):
    subscribe(acme)
    bad = put_override(admin, {"limits": [{"meter": "nope", "hard": "-1"}], "spend_cap": "0",
                               "run_limits": {"max_steps": 0}, "anomaly": {"window_minutes": 0, "factor": "1",
                                                                           "min_spend": "1"}})
    assert bad.status_code == 422
    fields = bad.json()["error"]["fields"]
    assert {"limits[0].meter", "limits[0].hard", "spend_cap", "run_limits.max_steps", "anomaly.window_minutes",
            "anomaly.factor"} <= set(fields)
    assert put_override(admin, {"colour": "red"}).status_code == 422


def test_a_plan_change_mid_period_applies_its_limits_to_the_next_event(acme, admin):
    text = factories.catalog(
        factories.plan("small", [{"meter": "llm_tokens", "model": "per_unit", "unit_price": "0.01"}],
                       limits=[{"meter": "llm_tokens", "hard": "1"}]),
        factories.plan("big", [{"meter": "llm_tokens", "model": "per_unit", "unit_price": "0.01"}],
                       limits=[{"meter": "llm_tokens", "hard": "1000"}]))
    factories.subscribe(acme, "big", start=START, catalog_text=text)
    assert send(admin, ev("a", "10")) == ["accepted"]
    now = datetime.now(timezone.utc)  # a change takes effect now or later: the past is not rewritten
    subscription_set(customer=acme, plan=Plan.objects.get(key="small"), start=now, now=now, actor="t")
    assert send(admin, ev("b", timestamp=now.isoformat())) == ["quota_exceeded"]
    assert admin.get("/api/v1/customers/acme-co/balance").json()["quotas"][0]["limit"] == "1"
    later = now + timedelta(seconds=1)
    subscription_set(customer=acme, plan=Plan.objects.get(key="big"), start=later, now=later, actor="t")
    assert send(admin, ev("c", "5", timestamp=later.isoformat())) == ["accepted"]
