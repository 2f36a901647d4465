"""Circuit breakers of agent runs, the run endpoint, kill and release; pauses (kill switches above the run):
refused at ingest and at reserve with ``402 circuit_open`` / ``402 paused``, on both ways of booking."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from billing.guardrails.models import Pause, Run
from billing.guardrails.pauses import pause_create
from billing.usage.models import UsageEvent
from tests import factories
from tests.conftest import post_json

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
AT = datetime.now(timezone.utc) - timedelta(seconds=5)
pytestmark = [pytest.mark.usefixtures("debit_mode"), pytest.mark.ledger, pytest.mark.django_db]


def subscribe(customer: Any, *, run_limits: dict[str, Any] | None = None, price: str = "0.01",
              extra: dict[str, Any] | None = None) -> None:
    terms: dict[str, Any] = dict(extra or {})
    if run_limits is not None:
        terms["run_limits"] = run_limits
    text = factories.catalog(factories.plan("metered", [{"meter": "llm_tokens", "model": "per_unit",
                                                          "unit_price": price}], **terms))
    factories.subscribe(customer, "metered", start=START, now=datetime.now(timezone.utc), catalog_text=text)


def ev(event_id: str, quantity: str = "1", run: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": event_id, "customer": "acme-co", "meter": "llm_tokens", "quantity": quantity,
                            "timestamp": AT.isoformat(), **extra}
    if run is not None:
        body["trace"] = {"run_id": run}
    return body


def send(client: Any, *events: dict[str, Any]) -> list[str]:
    """Each event's status, or its error code."""
    response = post_json(client, "/api/v1/events/batch", {"events": list(events)})
    assert response.status_code in (200, 207), response.content
    return [r["error"]["code"] if r.get("error") else r["status"] for r in response.json()["results"]]


def test_max_steps_refuses_the_first_step_over_and_trips_the_run(acme, admin):
    subscribe(acme, run_limits={"max_steps": 3})

    assert send(admin, *(ev(f"s{i}", run="r1") for i in range(3))) == ["accepted"] * 3
    over = post_json(admin, "/api/v1/events", ev("s3", run="r1"))
    other_run = post_json(admin, "/api/v1/events", ev("o1", run="r2"))
    no_run = post_json(admin, "/api/v1/events", ev("n1"))

    assert over.status_code == 402
    error = over.json()["error"]
    assert (error["code"], error["run_id"], error["breaker"]) == ("circuit_open", "r1", "max_steps")
    assert "max_steps" in error["message"]
    assert other_run.status_code == 201 and no_run.status_code == 201
    run = admin.get("/api/v1/customers/acme-co/runs/r1").json()
    assert (run["state"], run["steps"], run["spend"], run["breaker"]) == ("tripped", 3, "0.03", "max_steps")
    assert run["started_at"] is not None
    stored = UsageEvent.objects.get(event_id="s3")
    assert (stored.billable, stored.reason) == (False, "rejected_circuit_open")


def test_a_tripped_run_refuses_events_and_reservations_until_released(acme, admin):
    subscribe(acme, run_limits={"max_spend": "0.05"})
    assert send(admin, *(ev(f"s{i}", run="r1") for i in range(5))) == ["accepted"] * 5
    assert post_json(admin, "/api/v1/events", ev("s5", run="r1")).json()["error"]["breaker"] == "max_spend"

    # tripped: even an event that would fit is refused by the run's state, before any limit
    tiny = post_json(admin, "/api/v1/events", ev("tiny", "0", run="r1"))
    reserve = post_json(admin, "/api/v1/reservations", {"reservation_id": "res-1", "customer": "acme-co",
                                                        "meter": "llm_tokens", "quantity": "1", "ttl_seconds": 60,
                                                        "trace": {"run_id": "r1"}})
    assert tiny.status_code == 402 and tiny.json()["error"]["state"] == "tripped"
    assert reserve.status_code == 402 and reserve.json()["error"]["code"] == "circuit_open"

    released = post_json(admin, "/api/v1/customers/acme-co/runs/r1/release", {})
    assert released.status_code == 200 and released.json()["state"] == "open"
    assert "breaker" not in released.json()
    assert post_json(admin, "/api/v1/events", ev("tiny2", "0", run="r1")).status_code == 201
    # counters are kept: a step over max_spend trips it again
    again = post_json(admin, "/api/v1/events", ev("s6", run="r1"))
    assert again.status_code == 402 and Run.objects.get(run_id="r1").state == Run.State.TRIPPED


def test_kill_switch_stops_an_open_run_and_release_lets_it_go_on(acme, admin, make_client):
    subscribe(acme, run_limits={"max_steps": 1000})
    own = make_client("read", customer=acme)
    assert send(admin, ev("a", run="r9")) == ["accepted"]

    killed = post_json(own, "/api/v1/customers/acme-co/runs/r9/kill", {})
    refused = post_json(admin, "/api/v1/events", ev("b", run="r9"))
    released = post_json(own, "/api/v1/customers/acme-co/runs/r9/release", {})
    accepted = post_json(admin, "/api/v1/events", ev("c", run="r9"))

    assert killed.status_code == 200 and killed.json()["state"] == "killed" and killed.json()["breaker"] == "kill"
    assert refused.status_code == 402 and refused.json()["error"]["state"] == "killed"
    assert released.json()["state"] == "open" and accepted.status_code == 201
    assert admin.get("/api/v1/customers/acme-co/runs/r9").json()["steps"] == 2


def test_run_endpoint_404s_and_tenant_isolation(acme, globex, admin, make_client):
    subscribe(acme, run_limits={"max_steps": 1000})
    assert admin.get("/api/v1/customers/acme-co/runs/never").status_code == 404
    send(admin, ev("a", run="r1"))
    theirs = make_client("read", customer=globex)
    assert theirs.get("/api/v1/customers/acme-co/runs/r1").status_code == 404
    assert post_json(theirs, "/api/v1/customers/acme-co/runs/r1/kill", {}).status_code == 404
    ingest_only = make_client("ingest", customer=acme)
    assert post_json(ingest_only, "/api/v1/customers/acme-co/runs/r1/kill", {}).status_code == 403


def test_a_customer_pause_refuses_events_and_reservations_until_lifted(acme, admin):
    subscribe(acme)
    created = post_json(admin, "/api/v1/customers/acme-co/pauses", {"scope": "customer", "reason": "runaway agent"})
    assert created.status_code == 201
    pause = created.json()
    assert (pause["scope"], pause["source"], pause["active"]) == ("customer", "operator", True)

    refused = post_json(admin, "/api/v1/events", ev("a"))
    reserve = post_json(admin, "/api/v1/reservations", {"reservation_id": "res-1", "customer": "acme-co",
                                                        "meter": "llm_tokens", "quantity": "1", "ttl_seconds": 60})
    listed = admin.get("/api/v1/customers/acme-co/pauses").json()["data"]
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "paused"
    assert "runaway agent" in refused.json()["error"]["message"]
    assert reserve.status_code == 402 and reserve.json()["error"]["code"] == "paused"
    assert [p["pause_id"] for p in listed] == [pause["pause_id"]]
    assert UsageEvent.objects.get(event_id="a").reason == "rejected_paused"

    lifted = admin.delete(f"/api/v1/customers/acme-co/pauses/{pause['pause_id']}")
    assert lifted.status_code == 200 and lifted.json()["active"] is False
    assert admin.get("/api/v1/customers/acme-co/pauses").json()["data"] == []
    assert post_json(admin, "/api/v1/events", ev("b")).status_code == 201
    # a retry of the refused event stays refused
    assert post_json(admin, "/api/v1/events", ev("a")).status_code == 402


def test_a_project_pause_covers_only_that_project(acme, admin):
    subscribe(acme)
    for key in ("bot", "web"):
        assert post_json(admin, "/api/v1/customers/acme-co/projects", {"id": key, "name": key}).status_code == 201
    missing = post_json(admin, "/api/v1/customers/acme-co/pauses", {"scope": "project", "reason": "x"})
    assert missing.status_code == 422 and "project" in missing.json()["error"]["fields"]
    assert post_json(admin, "/api/v1/customers/acme-co/pauses",
                     {"scope": "project", "project": "bot", "reason": "bot loops"}).status_code == 201

    assert send(admin, ev("a", project="bot"), ev("b", project="web"), ev("c")) == ["paused", "accepted", "accepted"]


def test_customers_pause_themselves_but_only_the_operator_lifts_an_anomaly_pause(acme, globex, admin, make_client):
    subscribe(acme)
    own = make_client("read", customer=acme)
    mine = post_json(own, "/api/v1/customers/acme-co/pauses", {"scope": "customer", "reason": "holiday"}).json()
    assert mine["source"] == "customer"
    assert own.delete(f"/api/v1/customers/acme-co/pauses/{mine['pause_id']}").status_code == 200

    anomaly = pause_create(customer=acme, reason="anomaly", source=Pause.Source.ANOMALY)
    denied = own.delete(f"/api/v1/customers/acme-co/pauses/{anomaly.pause_id}")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "pause_operator_only"
    assert post_json(admin, "/api/v1/events", ev("a")).status_code == 402
    theirs = make_client("read", customer=globex)
    assert theirs.delete(f"/api/v1/customers/acme-co/pauses/{anomaly.pause_id}").status_code == 404
    assert admin.delete(f"/api/v1/customers/acme-co/pauses/{anomaly.pause_id}").status_code == 200
    assert post_json(admin, "/api/v1/events", ev("b")).status_code == 201


def test_max_duration_trips_a_run_that_outlives_it(acme, admin, monkeypatch):
    subscribe(acme, run_limits={"max_duration_seconds": 60})
    assert send(admin, ev("a", run="r1")) == ["accepted"]
    import time as time_module

    real = time_module.time_ns
    monkeypatch.setattr("billing.guardrails.limits.batch.time.time_ns", lambda: real() + 61 * 10**9)
    late = post_json(admin, "/api/v1/events", ev("b", run="r1"))
    assert late.status_code == 402 and late.json()["error"]["breaker"] == "max_duration_seconds"
    assert Run.objects.get(run_id="r1").breaker == "max_duration_seconds"


def test_run_limits_of_an_override_replace_the_plans(acme, admin):
    subscribe(acme, run_limits={"max_steps": 100})
    put = admin.put("/api/v1/customers/acme-co/overrides", data=json.dumps({"run_limits": {"max_steps": 1}}),
                    content_type="application/json")
    assert put.status_code == 200 and put.json()["run_limits"]["max_steps"] == 1
    assert send(admin, ev("a", run="r1"), ev("b", run="r1")) == ["accepted", "circuit_open"]
