"""GET /api/v1/customers/{id}/usage.csv: the usage endpoint's rows as streamed, spreadsheet-safe CSV."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import pytest
from django.contrib.auth import get_user_model

from billing.catalog.services import meter_create
from billing.common.auth import Principal
from billing.customers.services import customer_user_create
from billing.usage import rollups
from billing.usage.export import csv_cell, usage_csv_lines
from tests import factories

pytestmark = pytest.mark.django_db
ADMIN = Principal(scopes=frozenset({"admin"}))
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
RANGE = {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}


def send(*events: dict) -> None:
    factories.send(*events, now=NOW)


ev = factories.event


@pytest.fixture(autouse=True)
def _catalog(acme, globex, tokens_meter, calls_meter):
    acme.projects.create(key="chatbot")
    acme.projects.create(key="agent")
    meter_create(key="agents", name="Agents", aggregation="unique_count", unique_by="agent_id")


def read_csv(response) -> list[list[str]]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def as_rows(json_data: list[dict], group_by: list[str]) -> list[list[str]]:
    return [[r["meter"], r["start"], r["end"], *[r["group"].get(g) or "" for g in group_by], r["quantity"]]
            for r in json_data]


def many_events() -> None:
    models = ["gpt-4o", "claude", None]
    events = []
    for i in range(60):
        at = datetime(2026, 11, 3, 5, 17, tzinfo=timezone.utc) + timedelta(hours=7 * i, minutes=i)
        extra: dict = {"project": ["chatbot", "agent"][i % 2]}
        if models[i % 3]:
            extra["dimensions"] = {"model": models[i % 3], "agent_id": f"a{i % 4}"}
        events.append(ev(f"t{i}", at.isoformat(), str(i * 10 + 1), **extra))
        events.append(ev(f"c{i}", at.isoformat(), "1", meter="api_calls", **extra))
        events.append(ev(f"u{i}", at.isoformat(), "1", meter="agents", **extra))
    send(*events)


@pytest.mark.parametrize("granularity", ["hour", "day", "month"])
@pytest.mark.parametrize("group_by", [[], ["model"], ["project", "model"]])
def test_csv_rows_equal_the_usage_endpoint(admin, granularity, group_by):
    # given: events over three weeks, half of them rolled up (rollups + raw tail, windows cut mid-range)
    many_events()
    rollups.rollup_until_current(now=datetime(2026, 11, 12, tzinfo=timezone.utc))
    send(ev("late", "2026-11-20T10:00:00Z", "5", dimensions={"model": "gpt-4o"}))
    params = {**RANGE, "start": "2026-11-03T05:30:00Z", "granularity": granularity, "group_by": ",".join(group_by)}

    # when
    rows = read_csv(admin.get("/api/v1/customers/acme-co/usage.csv", params))
    data = admin.get("/api/v1/customers/acme-co/usage", params).json()["data"]

    # then: a header, then exactly the JSON rows in the same order
    assert rows[0] == ["meter", "start", "end", *group_by, "quantity"]
    assert rows[1:] == as_rows(data, group_by)
    assert len(rows) >= 4  # three meters at least


def test_meter_filter_and_response_is_streamed(admin):
    many_events()

    response = admin.get("/api/v1/customers/acme-co/usage.csv", {**RANGE, "meter": "api_calls", "granularity": "day"})

    assert response.streaming
    assert 'attachment; filename="usage-acme-co-' in response["Content-Disposition"]
    rows = read_csv(response)
    assert {r[0] for r in rows[1:]} == {"api_calls"}
    assert sum(int(r[-1]) for r in rows[1:]) == 60


def test_timestamps_are_utc_iso(admin):
    send(ev("a", "2026-11-10T23:30:00-05:00", "3"))

    rows = read_csv(admin.get("/api/v1/customers/acme-co/usage.csv", {**RANGE, "granularity": "hour"}))

    assert rows[1] == ["llm_tokens", "2026-11-11T04:00:00Z", "2026-11-11T05:00:00Z", "3"]


def test_formula_cells_are_neutralised_but_numbers_stay_numeric(admin):
    # given: hostile dimension values, and a correction that leaves an hour a fraction (corrections are
    # bounded: an hour's total never goes below zero; negative numbers are csv_cell's own test below)
    send(
        ev("f1", "2026-11-10T08:00:00Z", "2", dimensions={"model": "=HYPERLINK(\"http://x\")"}),
        ev("f2", "2026-11-10T09:00:00Z", "1", dimensions={"model": "+1+cmd|' /C calc'!A0"}),
        ev("f3", "2026-11-10T10:00:00Z", "1", dimensions={"model": "@SUM(A1)"}),
        ev("f4", "2026-11-10T11:00:00Z", "1", dimensions={"model": "\tTAB"}),
        ev("f5", "2026-11-10T12:00:00Z", "1", dimensions={"model": "-2+3"}),
        ev("f6", "2026-11-10T13:00:00Z", "1", dimensions={"model": "-5"}),
    )
    send(ev("fix", "2026-11-10T14:00:00Z", "-1.5", dimensions={"model": "=HYPERLINK(\"http://x\")"}, corrects="f1"))

    rows = read_csv(admin.get("/api/v1/customers/acme-co/usage.csv", {**RANGE, "granularity": "hour", "group_by": "model"}))

    cells = {r[3]: r[4] for r in rows[1:]}
    assert cells == {
        "'=HYPERLINK(\"http://x\")": "0.5",  # the total stays a number, the text is defused
        "'+1+cmd|' /C calc'!A0": "1",
        "'@SUM(A1)": "1",
        "'\tTAB": "1",
        "'-2+3": "1",
        "-5": "1",  # a plain number is not a formula
    }


@pytest.mark.parametrize("value, expected", [
    ("=1+2", "'=1+2"), ("-5", "-5"), ("+3.5", "+3.5"), ("-", "'-"), ("@x", "'@x"), ("\rx", "'\rx"), ("plain", "plain"),
    (None, ""), ("-1e5", "'-1e5"),
])
def test_csv_cell(value, expected):
    assert csv_cell(value) == expected


def test_same_auth_and_scopes_as_the_usage_endpoint(client, make_client, acme, globex):
    send(ev("a", "2026-11-10T08:00:00Z"))
    url = "/api/v1/customers/acme-co/usage.csv"

    assert client.get(url).status_code == 401
    assert make_client("ingest").get(url).status_code == 403
    assert make_client("read", customer=globex).get(url).status_code == 404
    assert make_client("read", customer=acme).get(url, RANGE).status_code == 200
    bad = make_client("read").get(url, {"granularity": "week"}, HTTP_ACCEPT="text/csv")
    assert bad.status_code == 422 and bad.json()["error"]["fields"]["granularity"]
    # a customer user's session (the dashboard's download button) reads its own customer only
    customer_user_create(customer=acme, username="ann", password="pw-123456")
    client.force_login(get_user_model().objects.get(username="ann"))
    assert read_csv(client.get(url, RANGE))[1][0] == "llm_tokens"
    assert client.get("/api/v1/customers/globex/usage.csv").status_code == 404


def test_chunks_are_bounded(acme):
    many_events()
    chunks = list(usage_csv_lines(customer=acme, start=datetime(2026, 11, 1, tzinfo=timezone.utc),
                                  end=datetime(2026, 12, 1, tzinfo=timezone.utc), granularity="hour"))
    assert chunks and all(len(c) < 70 * 1024 for c in chunks)
