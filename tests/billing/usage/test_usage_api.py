"""GET /api/v1/customers/{id}/usage, computed from raw events (rollups replace the scan later)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from billing.catalog.services import meter_create
from billing.common.auth import Principal
from tests import factories

pytestmark = pytest.mark.django_db
ADMIN = Principal(scopes=frozenset({"admin"}))
USAGE = "/api/v1/customers/acme-co/usage"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def send(*events: dict) -> None:
    factories.send(*events, now=NOW)


ev = factories.event


@pytest.fixture(autouse=True)
def _catalog(acme, tokens_meter, calls_meter):
    acme.projects.create(key="chatbot")
    acme.projects.create(key="agent")
    meter_create(key="peak_gpus", name="Peak GPUs", aggregation="max")
    meter_create(key="seats", name="Seats", aggregation="latest")
    meter_create(key="agents", name="Agents", aggregation="unique_count", unique_by="agent_id")


def usage(client, **params):
    response = client.get(USAGE, params)
    assert response.status_code == 200, response.content
    return response.json()["data"]


def test_sum_is_exact_per_day_and_group(admin):
    send(
        ev("a", "2026-11-10T23:59:59.999999Z", "0.1", dimensions={"model": "gpt-4o"}, project="chatbot"),
        ev("b", "2026-11-10T08:00:00Z", "0.2", dimensions={"model": "gpt-4o"}, project="agent"),
        ev("c", "2026-11-11T00:00:00Z", "1000000000000", dimensions={"model": "claude"}, project="agent"),
    )

    by_day = usage(admin, start="2026-11-01T00:00:00Z", end="2026-12-01T00:00:00Z", granularity="day", meter="llm_tokens")
    by_model = usage(admin, start="2026-11-01T00:00:00Z", end="2026-12-01T00:00:00Z", granularity="month",
                     group_by="model")
    by_project = usage(admin, start="2026-11-01T00:00:00Z", end="2026-12-01T00:00:00Z", granularity="month",
                       group_by="project")

    assert [(r["start"], r["end"], r["quantity"]) for r in by_day] == [
        ("2026-11-10T00:00:00Z", "2026-11-11T00:00:00Z", "0.3"),
        ("2026-11-11T00:00:00Z", "2026-11-12T00:00:00Z", "1000000000000"),
    ]
    assert {r["group"]["model"]: r["quantity"] for r in by_model} == {"claude": "1000000000000", "gpt-4o": "0.3"}
    assert {r["group"]["project"]: r["quantity"] for r in by_project} == {"agent": "1000000000000.2", "chatbot": "0.1"}


def test_half_open_range_and_hour_buckets(admin):
    send(ev("edge-in", "2026-11-10T10:00:00Z", "1"), ev("edge-out", "2026-11-10T11:00:00Z", "2"),
         ev("before", "2026-11-10T09:59:59.999999Z", "4"))

    rows = usage(admin, start="2026-11-10T10:00:00Z", end="2026-11-10T11:00:00Z", granularity="hour")

    assert [(r["start"], r["quantity"]) for r in rows] == [("2026-11-10T10:00:00Z", "1")]


def test_non_utc_offsets_land_in_the_utc_bucket(admin):
    send(ev("tz", "2026-11-11T01:30:00+02:00", "5"))  # 2026-11-10T23:30Z

    rows = usage(admin, start="2026-11-01T00:00:00Z", end="2026-12-01T00:00:00Z", granularity="day")

    assert rows[0]["start"] == "2026-11-10T00:00:00Z"


def test_correction_changes_the_original_hour(admin):
    send(ev("orig", "2026-11-10T10:15:00Z", "100"))
    send(ev("fix", "2026-11-20T10:00:00Z", "-30", corrects="orig"))

    rows = usage(admin, start="2026-11-01T00:00:00Z", end="2026-12-01T00:00:00Z", granularity="hour")

    assert [(r["start"], r["quantity"]) for r in rows] == [("2026-11-10T10:00:00Z", "70")]


def test_non_billable_events_are_not_usage(admin):
    send(ev("paid", "2026-11-10T10:00:00Z", "10"), ev("free", "2026-11-10T10:00:00Z", "5", billable=False, reason="test"))

    rows = usage(admin, start="2026-11-01T00:00:00Z", end="2026-12-01T00:00:00Z", granularity="month")

    assert rows[0]["quantity"] == "10"


def test_each_aggregation(admin):
    send(
        ev("c1", "2026-11-10T10:00:00Z", None, meter="api_calls"),
        ev("c2", "2026-11-10T10:01:00Z", None, meter="api_calls"),
        ev("m1", "2026-11-10T10:00:00Z", "3", meter="peak_gpus"),
        ev("m2", "2026-11-10T10:05:00Z", "8", meter="peak_gpus"),
        ev("m3", "2026-11-10T10:09:00Z", "2", meter="peak_gpus"),
        ev("s1", "2026-11-10T10:00:00Z", "12", meter="seats"),
        ev("s2", "2026-11-10T10:30:00Z", "9", meter="seats"),
        ev("s0", "2026-11-10T09:00:00Z", "50", meter="seats"),
        ev("u1", "2026-11-10T10:00:00Z", "1", meter="agents", dimensions={"agent_id": "a"}),
        ev("u2", "2026-11-10T10:00:00Z", "1", meter="agents", dimensions={"agent_id": "b"}),
        ev("u3", "2026-11-10T10:00:00Z", "1", meter="agents", dimensions={"agent_id": "a"}),
    )

    rows = usage(admin, start="2026-11-01T00:00:00Z", end="2026-12-01T00:00:00Z", granularity="month")

    assert {r["meter"]: r["quantity"] for r in rows} == {"api_calls": "2", "peak_gpus": "8", "seats": "9", "agents": "2"}


@pytest.mark.parametrize("params", [
    {"granularity": "week"},
    {"start": "yesterday"},
    {"start": "2026-11-10T00:00:00"},
    {"start": "2026-11-10T00:00:00Z", "end": "2026-11-09T00:00:00Z"},
    {"meter": "nope"},
])
def test_bad_parameters_are_422(admin, params):
    response = admin.get(USAGE, params)

    assert response.status_code == 422
    assert response.json()["error"]["fields"]


def test_events_list_is_newest_first_and_cursor_paginated(admin):
    send(*[ev(f"e{i}", f"2026-11-10T10:{i:02d}:00Z", str(i)) for i in range(5)])

    first = admin.get("/api/v1/events", {"limit": 2}).json()
    second = admin.get("/api/v1/events", {"limit": 2, "cursor": first["next_cursor"]}).json()
    third = admin.get("/api/v1/events", {"limit": 2, "cursor": second["next_cursor"]}).json()

    ids = [e["event_id"] for page in (first, second, third) for e in page["data"]]
    assert ids == ["e4", "e3", "e2", "e1", "e0"]
    assert third["next_cursor"] is None
    assert first["data"][0]["quantity"] == "4"
    window = admin.get("/api/v1/events", {"start": "2026-11-10T10:01:00Z", "end": "2026-11-10T10:03:00Z"}).json()
    assert [e["event_id"] for e in window["data"]] == ["e2", "e1"]
    assert admin.get("/api/v1/events", {"cursor": "!!"}).status_code == 422
