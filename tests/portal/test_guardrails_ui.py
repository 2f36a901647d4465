"""The guardrails' pages: a customer kills and releases its agent runs, pauses and resumes its usage and
manages its budgets from the dashboard; the operator does the same and edits the customer's override
from the console. Each action is proved end to end: the next event through ``POST /api/v1/events``
with an API key is refused (or accepted again) as the page said."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from html import escape, unescape
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from billing.customers.services import customer_user_create
from billing.guardrails.models import Budget, CustomerOverride, Pause, Run
from billing.guardrails.pauses import pause_create
from tests import factories
from tests.conftest import post_json

pytestmark = [pytest.mark.django_db, pytest.mark.ledger]
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
CALLS = {"key": "api_calls", "name": "API calls", "unit": "call", "aggregation": "count"}
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def plans(acme, globex):
    """acme on a plan whose runs have breakers (max 2 steps); globex on one without run limits."""
    charge = {"meter": "llm_tokens", "model": "per_unit", "unit_price": "0.01"}
    text = factories.catalog(factories.plan("guarded", [charge], run_limits={"max_steps": 2}),
                             factories.plan("plain", [charge]), meters=(factories.TOKENS, CALLS))
    now = datetime.now(timezone.utc)
    factories.subscribe(acme, "guarded", start=START, now=now, catalog_text=text)
    factories.subscribe(globex, "plain", start=START, now=now)
    acme.projects.create(key="chatbot")
    acme.projects.create(key="agent")


@pytest.fixture
def ann(client, acme, plans):
    customer_user_create(customer=acme, username="ann", password="pw-123456")
    client.login(username="ann", password="pw-123456")
    return client


@pytest.fixture
def key(make_client, acme, plans):
    """What the customer's app ingests with: an ingest key restricted to acme."""
    return make_client("ingest", customer=acme)


def event(event_id: str, quantity: str = "1", *, run: str | None = None, customer: str = "acme-co",
          **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": event_id, "customer": customer, "meter": "llm_tokens", "quantity": quantity,
                            "timestamp": (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat(), **extra}
    if run is not None:
        body["trace"] = {"run_id": run}
    return body


def answer(client: Any, body: dict[str, Any]) -> tuple[int, str]:
    """``POST /api/v1/events``: the status and the error code (or "")."""
    response = post_json(client, "/api/v1/events", body)
    return response.status_code, (response.json().get("error") or {}).get("code", "")


def section(page: str, marker: str) -> str:
    """The page from ``marker`` to the end of its section."""
    start = page.index(marker)
    return page[start:page.index("</section>", start)]


# --- dashboard: who sees what -----------------------------------------------------------------------

def test_a_customer_user_sees_its_own_guardrails_and_404_for_another_customers(ann, key, globex, make_client):
    assert answer(key, event("e1", run="r1")) == (201, "")
    theirs_key = make_client("ingest", customer=globex)
    assert answer(theirs_key, event("g1", run="g-run", customer="globex")) == (201, "")
    theirs_pause = pause_create(customer=globex, reason="theirs", source=Pause.Source.CUSTOMER)
    Budget.objects.create(customer=globex, budget_id="theirs", amount=5)

    for url in ["/dashboard/acme-co/runs/r1/", "/dashboard/acme-co/usage/", "/dashboard/acme-co/settings/",
                "/dashboard/acme-co/"]:
        assert ann.get(url).status_code == 200, url
    assert ann.get("/dashboard/globex/runs/g-run/").status_code == 404
    posts = ["/dashboard/globex/runs/g-run/kill", "/dashboard/globex/runs/g-run/release",
             "/dashboard/globex/settings/pauses", f"/dashboard/globex/settings/pauses/{theirs_pause.pause_id}/resume",
             f"/dashboard/acme-co/settings/pauses/{theirs_pause.pause_id}/resume",  # own page, foreign id
             "/dashboard/globex/settings/budgets", "/dashboard/globex/settings/budgets/theirs/delete",
             "/dashboard/acme-co/settings/budgets/theirs/delete"]
    for url in posts:
        body = {"pause-scope": "customer", "pause-reason": "evil", "budget-budget_id": "evil", "budget-amount": "1",
                "budget-period": "month", "budget-action": "block"}
        assert ann.post(url, body).status_code == 404, url
    # nothing of theirs changed: their run not stopped, their pause active, their budget there, nothing new
    assert not Run.objects.exists()
    assert list(Pause.objects.values_list("pause_id", "lifted_at")) == [(theirs_pause.pause_id, None)]
    assert list(Budget.objects.values_list("budget_id", flat=True)) == ["theirs"]


def test_anonymous_posts_go_to_the_login_and_change_nothing(client, plans):
    for url in ["/dashboard/acme-co/runs/r1/kill", "/dashboard/acme-co/settings/pauses",
                "/dashboard/acme-co/settings/budgets"]:
        response = client.post(url, {"pause-scope": "customer", "pause-reason": "x"})
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url
    assert not Run.objects.exists() and not Pause.objects.exists()


# --- dashboard: runs --------------------------------------------------------------------------------

def test_kill_a_run_from_its_page_then_its_next_event_is_refused_until_released(ann, key):
    assert answer(key, event("s1", run="r1")) == (201, "")
    page = ann.get("/dashboard/acme-co/runs/r1/").content.decode()
    guard = page[page.index('id="run-guard"'):]
    assert 'data-run-state="open"' in guard and 'data-run-steps="1"' in guard and 'data-run-spend="0.01"' in guard
    assert 'action="/dashboard/acme-co/runs/r1/kill"' in guard and "hx-confirm=" in guard

    killed = ann.post("/dashboard/acme-co/runs/r1/kill", **HTMX)

    assert killed.status_code == 200
    fragment = killed.content.decode()
    assert fragment.lstrip().startswith('<div id="run-guard"')  # just the panel, swapped in place
    assert 'data-run-state="killed"' in fragment and 'action="/dashboard/acme-co/runs/r1/release"' in fragment
    assert answer(key, event("s2", run="r1")) == (402, "circuit_open")
    assert answer(key, event("other", run="r2")) == (201, "")  # only that run
    usage = ann.get("/dashboard/acme-co/usage/").content.decode()
    assert 'data-run="r1"' in usage and 'data-state="killed"' in usage
    assert 'data-stopped-run="r1" data-state="killed"' in section(usage, 'id="stopped-title"')

    released = ann.post("/dashboard/acme-co/runs/r1/release", {"back": "usage"})

    assert released.status_code == 302 and released["Location"] == "/dashboard/acme-co/usage/#stopped-runs"
    assert Run.objects.get(run_id="r1").state == Run.State.OPEN
    assert answer(key, event("s3", run="r1")) == (201, "")
    assert "No stopped run." in section(ann.get("/dashboard/acme-co/usage/").content.decode(), 'id="stopped-title"')


def test_a_tripped_run_shows_its_breaker_and_is_released_from_its_page(ann, key):
    assert [answer(key, event(f"t{i}", run="loop")) for i in range(3)] == [(201, "")] * 2 + [(402, "circuit_open")]

    page = ann.get("/dashboard/acme-co/runs/loop/").content.decode()

    guard = page[page.index('id="run-guard"'):page.index("</form>", page.index('id="run-guard"'))]
    assert 'data-run-state="tripped"' in guard and 'data-breaker="max_steps"' in guard
    assert 'data-run-steps="2"' in guard and "Release" in guard and "Kill run" not in guard
    released = ann.post("/dashboard/acme-co/runs/loop/release")
    assert released.status_code == 302 and released["Location"] == "/dashboard/acme-co/runs/loop/"
    # counters kept: the breaker is still exceeded, so the next step trips it again
    assert answer(key, event("t3", run="loop")) == (402, "circuit_open")


def test_a_run_without_run_limits_shows_as_before_with_a_kill_switch(client, globex, plans, make_client):
    customer_user_create(customer=globex, username="gus", password="pw-123456")
    client.login(username="gus", password="pw-123456")
    theirs = make_client("ingest", customer=globex)
    assert answer(theirs, event("g1", run="free", customer="globex")) == (201, "")

    page = client.get("/dashboard/globex/runs/free/").content.decode()

    assert "data-run-state" not in page and "data-run-steps" not in page and "Kill run" in page
    assert client.post("/dashboard/globex/runs/free/kill").status_code == 302
    assert answer(theirs, event("g2", run="free", customer="globex")) == (402, "circuit_open")
    after = client.get("/dashboard/globex/runs/free/").content.decode()
    assert 'data-run-state="killed"' in after and "data-run-steps" not in after  # its steps were never counted


def test_an_unknown_run_is_404_and_a_get_of_kill_changes_nothing(ann):
    assert ann.get("/dashboard/acme-co/runs/never/").status_code == 404
    assert ann.get("/dashboard/acme-co/runs/never/kill").status_code == 405
    assert not Run.objects.exists()


# --- dashboard: pauses ------------------------------------------------------------------------------

def test_pause_all_usage_refuses_events_until_resumed(ann, key):
    paused = ann.post("/dashboard/acme-co/settings/pauses", {"pause-scope": "customer", "pause-reason": "runaway bill"})

    assert paused.status_code == 302 and paused["Location"] == "/dashboard/acme-co/settings/?saved=paused"
    pause = Pause.objects.get()
    assert (pause.scope, pause.source, pause.reason, pause.created_by) == ("customer", "customer", "runaway bill", "ann")
    assert answer(key, event("p1")) == (402, "paused")
    settings_page = ann.get("/dashboard/acme-co/settings/").content.decode()
    listed = section(settings_page, 'id="pauses-title"')
    assert f'data-pause="{pause.pause_id}"' in listed and "runaway bill" in listed and ">Resume</button>" in listed
    assert 'data-paused="1"' in ann.get("/dashboard/acme-co/glance").content.decode()  # the overview says so, live

    resumed = ann.post(f"/dashboard/acme-co/settings/pauses/{pause.pause_id}/resume")

    assert resumed.status_code == 302 and resumed["Location"] == "/dashboard/acme-co/settings/?saved=resumed"
    assert answer(key, event("p2")) == (201, "")
    assert "Nothing is paused." in ann.get("/dashboard/acme-co/settings/").content.decode()
    assert "data-paused" not in ann.get("/dashboard/acme-co/glance").content.decode()


def test_pause_one_project(ann, key):
    response = ann.post("/dashboard/acme-co/settings/pauses", {"project-pause-scope": "project",
                                                                "project-pause-project": "agent",
                                                                "project-pause-reason": "agent loops"})

    assert response.status_code == 302
    assert answer(key, event("a1", project="agent")) == (402, "paused")
    assert answer(key, event("c1", project="chatbot")) == (201, "")
    assert answer(key, event("n1")) == (201, "")


@pytest.mark.parametrize("body, field, message", [
    ({"pause-scope": "customer", "pause-reason": ""}, "id_pause-reason_error", "This field is required."),
    ({"project-pause-scope": "project", "project-pause-project": "nope", "project-pause-reason": "x"},
     "id_project-pause-project_error", "No project 'nope' for this customer."),
])
def test_an_invalid_pause_shows_the_field_error_and_pauses_nothing(ann, key, body, field, message):
    response = ann.post("/dashboard/acme-co/settings/pauses", body)

    assert response.status_code == 422
    page = response.content.decode()
    assert f'<p class="error" id="{field}">{escape(message)}</p>' in page
    assert 'id="budget-list"' in page  # the whole settings page again
    assert not Pause.objects.exists()
    assert answer(key, event("x1", project="agent")) == (201, "")


def test_an_anomaly_pause_is_shown_without_resume_and_the_customer_cannot_lift_it(ann, acme, key):
    pause = pause_create(customer=acme, reason="anomaly", source=Pause.Source.ANOMALY, actor="system")

    listed = section(ann.get("/dashboard/acme-co/settings/").content.decode(), 'id="pauses-title"')
    refused = ann.post(f"/dashboard/acme-co/settings/pauses/{pause.pause_id}/resume")

    row = listed[listed.index(f'data-pause="{pause.pause_id}"'):]
    row = row[:row.index("</tr>")]
    assert "Paused by the operator's anomaly review: contact them." in row and "Resume" not in row
    assert refused.status_code == 403
    assert "only the operator can lift it" in section(refused.content.decode(), 'id="pauses-title"')
    assert Pause.objects.get().lifted_at is None
    assert answer(key, event("still")) == (402, "paused")


# --- dashboard: budgets -----------------------------------------------------------------------------

BUDGET = {"budget-budget_id": "u42-daily", "budget-dimension_key": "end_user", "budget-dimension_value": "u-42",
          "budget-amount": "0.05", "budget-period": "day", "budget-action": "block", "budget-soft": "50"}


def test_a_budget_created_from_settings_is_listed_with_its_figures_and_enforced(ann, key):
    created = ann.post("/dashboard/acme-co/settings/budgets", BUDGET)

    assert created.status_code == 302 and created["Location"] == "/dashboard/acme-co/settings/?saved=budget"
    budget = Budget.objects.get()
    assert (budget.scope, budget.period, budget.action, str(budget.soft_percent)) == (
        {"dimension": {"end_user": "u-42"}}, "day", "block", "50.00")
    u42: dict[str, Any] = {"dimensions": {"end_user": "u-42"}}
    assert answer(key, event("b1", "3", **u42)) == (201, "")
    assert answer(key, event("b2", "3", **u42)) == (402, "budget_exceeded")  # 0.06 > 0.05
    assert answer(key, event("b3", "3", dimensions={"end_user": "u-7"})) == (201, "")
    listed = section(ann.get("/dashboard/acme-co/settings/").content.decode(), 'id="budgets-title"')
    row = listed[listed.index('data-budget="u42-daily"'):]
    assert row.startswith('data-budget="u42-daily" data-used="0.03" data-remaining="0.02"')
    assert "end_user <code>u-42</code>" in row and "per day" in row and "blocks" in row and "50%" in row

    deleted = ann.post("/dashboard/acme-co/settings/budgets/u42-daily/delete")

    assert deleted.status_code == 302 and not Budget.objects.exists()
    assert answer(key, event("b4", "3", **u42)) == (201, "")


def test_a_budget_on_a_project_or_one_of_the_customers_keys(ann, acme, globex, key, make_client):
    theirs = make_client("ingest", customer=globex)
    own_prefix = key.raw_key.split("_")[1]
    theirs_prefix = theirs.raw_key.split("_")[1]

    form = section(ann.get("/dashboard/acme-co/settings/").content.decode(), 'id="budgets-title"')
    assert f'<option value="{own_prefix}">' in form and theirs_prefix not in form
    assert '<option value="agent">' in form
    created = ann.post("/dashboard/acme-co/settings/budgets", {
        **BUDGET, "budget-budget_id": "agent-key", "budget-dimension_value": "", "budget-project": "agent",
        "budget-api_key": own_prefix, "budget-amount": "0.01", "budget-period": "month"})

    assert created.status_code == 302
    assert Budget.objects.get().scope["project"] == "agent"
    assert answer(key, event("k1", project="agent")) == (201, "")
    assert answer(key, event("k2", project="agent")) == (402, "budget_exceeded")
    assert answer(key, event("k3", project="chatbot")) == (201, "")


@pytest.mark.parametrize("change, field, message", [
    ({"budget-amount": "-1"}, "id_budget-amount_error", "A positive decimal string"),
    ({"budget-budget_id": "no spaces please"}, "id_budget-budget_id_error", "1-60 characters"),
    ({"budget-soft": "150"}, "id_budget-soft_error", "A percentage like"),
    ({"budget-project": "nope"}, "id_budget-project_error", escape("No project 'nope' of this customer.")),
    ({"budget-api_key": "zzzz"}, "id_budget-api_key_error", "No API key with this prefix."),
    ({"budget-period": "week"}, "id_budget-period_error", "Select a valid choice."),
])
def test_an_invalid_budget_shows_the_field_error_and_creates_nothing(ann, change, field, message):
    response = ann.post("/dashboard/acme-co/settings/budgets", {**BUDGET, **change})

    assert response.status_code == 422
    page = response.content.decode()
    error = page[page.index(f'id="{field}"'):]
    assert message in error[:error.index("</p>")]
    assert not Budget.objects.exists()


def test_the_same_budget_id_with_another_body_is_a_conflict_shown_on_the_form(ann):
    assert ann.post("/dashboard/acme-co/settings/budgets", BUDGET).status_code == 302

    again = ann.post("/dashboard/acme-co/settings/budgets", {**BUDGET, "budget-amount": "9"})

    assert again.status_code == 409
    assert "delete it first" in again.content.decode()
    assert str(Budget.objects.get().amount).rstrip("0") == "0.05"


# --- staff --------------------------------------------------------------------------------------------

@pytest.fixture
def ops(client, plans):
    user = get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True)
    client.force_login(user)
    return client


def test_staff_pausing_from_the_dashboard_is_recorded_as_the_operator(ops):
    ops.post("/dashboard/acme-co/settings/pauses", {"pause-scope": "customer", "pause-reason": "checking"})

    assert Pause.objects.get().source == Pause.Source.OPERATOR



# --- console ----------------------------------------------------------------------------------------

CONSOLE = "/console/customers/acme-co/guardrails/"
OVERRIDE = {"limit-llm_tokens-hard": "100", "limit-llm_tokens-soft": "80%", "limit-api_calls-hard": "",
            "limit-api_calls-soft": "", "spend_cap_mode": "set", "spend_cap": "5",
            "run_limits-max_steps": "10", "run_limits-max_spend": "", "run_limits-max_duration_seconds": "600",
            "anomaly-window_minutes": "10", "anomaly-factor": "3", "anomaly-min_spend": "1", "anomaly-action": "pause"}


def test_the_console_page_is_the_operators_only(client, ann, plans):
    posts = [f"{CONSOLE}override", f"{CONSOLE}pauses", f"{CONSOLE}budgets", f"{CONSOLE}runs",
             f"{CONSOLE}budgets/b/delete", f"{CONSOLE}pauses/pau_x/lift"]
    # a customer user: 403 everywhere, nothing changed
    assert ann.get(CONSOLE).status_code == 403
    for url in posts:
        assert ann.post(url, {**OVERRIDE, "pause-scope": "customer", "pause-reason": "x", "run_id": "r1",
                              "action": "kill"}).status_code == 403, url
    assert not CustomerOverride.objects.exists() and not Pause.objects.exists() and not Run.objects.exists()
    # anonymous: to the login
    client.logout()
    response = client.get(CONSOLE)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_console_index_links_each_customers_guardrails_page(ops):
    index = ops.get("/console/").content.decode()

    assert f'href="{CONSOLE}"' in index and 'href="/console/customers/globex/guardrails/"' in index
    assert ops.get(CONSOLE).status_code == 200
    assert ops.get("/console/customers/globex/guardrails/").status_code == 200
    assert ops.get("/console/customers/nobody/guardrails/").status_code == 404


def test_an_override_saved_in_the_console_is_what_the_api_shows_and_what_is_enforced(ops, admin, key):
    saved = ops.post(f"{CONSOLE}override", OVERRIDE)

    assert saved.status_code == 302 and saved["Location"] == f"{CONSOLE}?saved=override"
    body = admin.get("/api/v1/customers/acme-co/overrides").json()
    assert body["limits"] == [{"meter": "llm_tokens", "hard": "100", "soft": "80%"}]
    assert body["spend_cap"] == "5"
    assert body["run_limits"] == {"max_steps": 10, "max_spend": None, "max_duration_seconds": 600}
    assert body["anomaly"] == {"window_minutes": 10, "factor": "3", "min_spend": "1", "action": "pause"}
    # in force from the next event: 100 tokens fit, the 101st does not
    assert answer(key, event("o1", "100")) == (201, "")
    assert answer(key, event("o2", "1")) == (402, "quota_exceeded")
    # the editor shows the override in force
    page = ops.get(CONSOLE).content.decode()
    assert 'name="limit-llm_tokens-hard" value="100"' in page and 'name="run_limits-max_steps" value="10"' in page
    assert 'value="set" checked' in page and 'name="spend_cap" value="5"' in page
    assert '<option value="pause" selected>' in page


def test_remove_the_cap_and_go_back_to_the_plans_terms(ops, admin):
    assert ops.post(f"{CONSOLE}override", {"spend_cap_mode": "remove"}).status_code == 302
    removed = admin.get("/api/v1/customers/acme-co/overrides").json()
    assert "spend_cap" in removed and removed["spend_cap"] is None
    assert 'value="remove" checked' in ops.get(CONSOLE).content.decode()

    assert ops.post(f"{CONSOLE}override", {"spend_cap_mode": "plan"}).status_code == 302
    assert "spend_cap" not in admin.get("/api/v1/customers/acme-co/overrides").json()


@pytest.mark.parametrize("change, field, message", [
    ({"limit-llm_tokens-hard": "-5"}, "limit-llm_tokens-hard", "must be greater than 0"),
    ({"run_limits-max_steps": "0"}, "run_limits-max_steps", "must be a positive whole number"),
    ({"run_limits-max_steps": "many"}, "run_limits-max_steps", "Expected `int"),
    ({"anomaly-factor": "0.5"}, "anomaly-factor", "must be greater than 1"),
    ({"spend_cap": "0"}, "spend_cap", "must be greater than 0"),
    ({"limit-api_calls-hard": "5", "limit-api_calls-soft": "lots"}, "limit-api_calls-soft", "a number or a percentage"),
])
def test_an_invalid_override_shows_the_error_beside_its_input_and_changes_nothing(ops, admin, change, field, message):
    assert ops.post(f"{CONSOLE}override", OVERRIDE).status_code == 302
    before = admin.get("/api/v1/customers/acme-co/overrides").json()

    response = ops.post(f"{CONSOLE}override", {**OVERRIDE, **change})

    assert response.status_code == 422
    page = response.content.decode()
    error = page[page.index(f'data-error-for="{field}"'):]
    assert message in unescape(error[:error.index("</p>")])
    value = next(iter(change.values())) if len(change) == 1 else change[field]
    assert f'name="{field}" value="{escape(value)}"' in page  # what was typed stays, to be corrected
    assert admin.get("/api/v1/customers/acme-co/overrides").json() == before


def test_the_operator_pauses_a_customer_and_a_project_and_lifts_them_an_anomalys_too(ops, acme, key):
    assert ops.post(f"{CONSOLE}pauses", {"pause-scope": "project", "pause-project": "agent",
                                         "pause-reason": "loop"}).status_code == 302
    assert answer(key, event("a1", project="agent")) == (402, "paused")
    assert answer(key, event("c1", project="chatbot")) == (201, "")
    assert ops.post(f"{CONSOLE}pauses", {"pause-scope": "customer", "pause-reason": "fraud check"}).status_code == 302
    assert answer(key, event("c2", project="chatbot")) == (402, "paused")
    anomaly = pause_create(customer=acme, reason="anomaly", source=Pause.Source.ANOMALY, actor="system")
    assert {p.source for p in Pause.objects.all()} == {"operator", "anomaly"}

    listed = section(ops.get(CONSOLE).content.decode(), 'id="pauses-title"')
    assert listed.count('action="/console/customers/acme-co/guardrails/pauses/') == 3
    for pause in Pause.objects.filter(lifted_at__isnull=True):
        assert ops.post(f"{CONSOLE}pauses/{pause.pause_id}/lift").status_code == 302

    assert Pause.objects.get(pk=anomaly.pk).lifted_by == "ops"
    assert answer(key, event("a2", project="agent")) == (201, "")
    assert "Nothing is paused." in ops.get(CONSOLE).content.decode()


def test_an_invalid_console_pause_shows_its_error(ops):
    response = ops.post(f"{CONSOLE}pauses", {"pause-scope": "project", "pause-project": "", "pause-reason": "x"})

    assert response.status_code == 422
    assert "Required when scope is &#x27;project&#x27;." in response.content.decode()
    assert not Pause.objects.exists()


def test_budgets_from_the_console(ops, key):
    created = ops.post(f"{CONSOLE}budgets", {**BUDGET, "budget-budget_id": "whole", "budget-dimension_value": "",
                                             "budget-amount": "0.02", "budget-period": "month"})
    assert created.status_code == 302
    assert answer(key, event("w1", "2")) == (201, "")
    assert answer(key, event("w2", "1")) == (402, "budget_exceeded")
    listed = section(ops.get(CONSOLE).content.decode(), 'id="budgets-title"')
    assert 'data-budget="whole" data-used="0.02" data-remaining="0"' in listed and "all usage" in listed

    invalid = ops.post(f"{CONSOLE}budgets", {**BUDGET, "budget-budget_id": "x", "budget-amount": "zero"})
    assert invalid.status_code == 422 and "A positive decimal string" in invalid.content.decode()
    assert ops.post(f"{CONSOLE}budgets/whole/delete").status_code == 302
    assert answer(key, event("w3", "1")) == (201, "")
    assert ops.post(f"{CONSOLE}budgets/whole/delete").status_code == 404


def test_the_operator_kills_a_run_by_id_and_releases_stopped_runs(ops, key):
    assert [answer(key, event(f"t{i}", run="loop")) for i in range(3)][-1] == (402, "circuit_open")

    killed = ops.post(f"{CONSOLE}runs", {"run_id": "r7", "action": "kill"})

    assert killed.status_code == 302 and killed["Location"] == f"{CONSOLE}?saved=killed"
    assert answer(key, event("k1", run="r7")) == (402, "circuit_open")
    listed = section(ops.get(CONSOLE).content.decode(), 'id="runs-title"')
    assert 'data-stopped-run="r7" data-state="killed"' in listed
    assert 'data-stopped-run="loop" data-state="tripped"' in listed
    assert ops.post(f"{CONSOLE}runs", {"run_id": "r7", "action": "release"}).status_code == 302
    assert answer(key, event("k2", run="r7")) == (201, "")
    assert ops.post(f"{CONSOLE}runs", {"run_id": "loop", "action": "kill"}).status_code == 302
    assert Run.objects.get(run_id="loop").state == Run.State.KILLED
    # an id never stopped cannot be released; a blank one is refused
    never = ops.post(f"{CONSOLE}runs", {"run_id": "never", "action": "release"})
    assert never.status_code == 404 and "never tripped or killed" in never.content.decode()
    assert ops.post(f"{CONSOLE}runs", {"run_id": "", "action": "kill"}).status_code == 422
