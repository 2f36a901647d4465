"""The customer dashboard (portal/dashboard): who sees what, the figures at a glance, charts, breakdowns,
agent runs, invoices and settings. The browser tests (test_dashboard_browser.py) drive the same pages
in Chromium."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from billing.catalog.models import Plan
from billing.catalog.services import catalog_import, subscription_set
from billing.common.auth import Principal
from billing.common.calendar import period_bounds
from billing.customers.models import CustomerUser
from billing.customers.services import customer_user_create
from billing.guardrails.alerts import alert_threshold_create, alerts_check, plan_alert_threshold_set
from billing.guardrails.models import Alert, AlertThreshold
from billing.invoicing import lines
from billing.invoicing.compute import upcoming_invoice
from billing.invoicing.lines import ADDITIVE
from billing.invoicing.models import Invoice
from billing.usage.services import events_ingest
from portal.dashboard import selectors
from portal.dashboard.costs import unit_costs

pytestmark = [pytest.mark.django_db, pytest.mark.ledger]
ADMIN = Principal(scopes=frozenset({"admin"}))
CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
  - {key: api_calls, name: API calls, unit: call, aggregation: count}
plans:
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2026-01-01T00:00:00Z"
    base_fee: "10"
    charges:
      - meter: llm_tokens
        filter: {model: gpt-4o}
        model: graduated
        tiers:
          - {up_to: 1000, unit_price: "0.01"}
          - {up_to: null, unit_price: "0.005"}
      - {meter: llm_tokens, filter: {model: mini}, model: per_unit, unit_price: "0.001"}
      - {meter: api_calls, model: package, package_size: 10, package_price: "1.00"}
    limits:
      - {meter: llm_tokens, soft: "80%", hard: 10000}
"""


def dashboard_urls(customer_id: str) -> list[str]:
    """Every dashboard URL of one customer (the browser test tries the same list)."""
    base = f"/dashboard/{customer_id}"
    return [f"{base}/", f"{base}/glance", f"{base}/charts", f"{base}/usage/", f"{base}/usage/?by=model",
            f"{base}/runs/run-1/", f"{base}/invoices/", f"{base}/settings/"]


def dashboard_posts(customer_id: str) -> list[str]:
    return [f"/dashboard/{customer_id}/settings/", f"/dashboard/{customer_id}/settings/users",
            f"/dashboard/{customer_id}/settings/thresholds", f"/dashboard/{customer_id}/settings/thresholds/1/delete"]


@pytest.fixture
def now():
    return datetime.now(timezone.utc)


@pytest.fixture
def plan(acme, globex, now):
    catalog_import(text=CATALOG, actor="t")
    pro = Plan.objects.get(key="pro")
    subscription_set(customer=acme, plan=pro, start=now - timedelta(days=40), now=now, actor="t")
    subscription_set(customer=globex, plan=pro, start=now - timedelta(days=40), now=now, actor="t")
    acme.projects.create(key="chatbot")
    acme.projects.create(key="agent")
    return pro


def send(now: datetime, *events: dict) -> None:
    period_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    raw = []
    for i, e in enumerate(events):
        at = max(now - timedelta(seconds=60 - i % 50), period_start)
        raw.append(json.dumps({"customer": "acme-co", "timestamp": at.isoformat(), **e}).encode())
    results = events_ingest(principal=ADMIN, raw_events=raw)
    assert all(r.status == "accepted" for r in results), [r.as_dict() for r in results]


def tokens(event_id: str, quantity: int, model: str = "gpt-4o", **extra: object) -> dict:
    return {"event_id": event_id, "meter": "llm_tokens", "quantity": str(quantity), "dimensions": {"model": model},
            **extra}


@pytest.fixture
def ann(client, acme, plan):
    customer_user_create(customer=acme, username="ann", password="pw-123456")
    client.login(username="ann", password="pw-123456")
    return client


@pytest.fixture
def staff(client, plan):
    user = get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True)
    client.force_login(user)
    return client


def test_login_lands_a_customer_user_on_their_own_dashboard(client, acme, plan):
    customer_user_create(customer=acme, username="ann", password="pw-123456")

    login = client.post("/accounts/login/", {"username": "ann", "password": "pw-123456"})
    home = client.get(login["Location"])

    assert login["Location"] == "/dashboard/"
    assert home.status_code == 302 and home["Location"] == "/dashboard/acme-co/"
    assert "Acme" in client.get(home["Location"]).content.decode()


def test_anonymous_is_sent_to_login_everywhere(client, plan):
    for url in ["/dashboard/", *dashboard_urls("acme-co")]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url


def test_a_poll_after_logout_sends_the_page_to_the_login(client, plan):
    response = client.get("/dashboard/acme-co/glance", HTTP_HX_REQUEST="true",
                          HTTP_HX_CURRENT_URL="http://testserver/dashboard/acme-co/")

    assert response.status_code == 200
    assert response["HX-Redirect"].startswith("/accounts/login/?next=")


def test_a_customer_user_gets_404_on_every_url_of_another_customer(ann, now):
    send(now, tokens("e1", 10, trace={"run_id": "run-1"}))

    for url in dashboard_urls("globex") + dashboard_urls("no-such-customer"):
        assert ann.get(url).status_code == 404, url
    for url in dashboard_posts("globex"):
        assert ann.post(url, {"email": "x@evil.example", "username": "mallory", "password": "pw-12345678"}
                        ).status_code == 404, url
    # the same pages of their own customer work, and nothing was changed on the other one
    for url in dashboard_urls("acme-co"):
        assert ann.get(url).status_code == 200, url
    assert not CustomerUser.objects.filter(user__username="mallory").exists()
    assert not AlertThreshold.objects.exists()


def test_a_login_without_customer_gets_403(client, plan):
    get_user_model().objects.create_user("nobody", password="pw-123456")
    client.login(username="nobody", password="pw-123456")

    assert client.get("/dashboard/").status_code == 403
    assert client.get("/dashboard/acme-co/").status_code == 404


def test_staff_may_open_any_customer(staff):
    assert "acme-co" in staff.get("/dashboard/").content.decode()
    for url in dashboard_urls("globex")[:5] + dashboard_urls("acme-co")[:5]:
        assert staff.get(url).status_code == 200, url


def test_glance_matches_the_api(ann, admin, now):
    # given: 1,500 gpt-4o tokens (past tier 1), 300 mini tokens, 12 API calls, and 25.00 of credits
    send(now, tokens("a", 1000), tokens("b", 500), tokens("c", 300, model="mini"),
         *[{"event_id": f"call-{i}", "meter": "api_calls"} for i in range(12)])
    admin.post("/api/v1/customers/acme-co/credits", {"amount": "25", "idempotency_key": "g1"}, format="json")

    # when
    page = ann.get("/dashboard/acme-co/").content.decode()

    # then: the same figures as the usage, upcoming-invoice and balance endpoints
    rows = ann.get("/api/v1/customers/acme-co/usage", {"granularity": "month"}).json()["data"]
    usage = {r["meter"]: r["quantity"] for r in rows}
    invoice = ann.get("/api/v1/customers/acme-co/upcoming-invoice").json()
    balance = ann.get("/api/v1/customers/acme-co/balance").json()
    assert usage == {"llm_tokens": "1800", "api_calls": "12"}
    assert 'data-meter="llm_tokens" data-used="1800" data-hard="10000" data-soft="8000' in page
    assert 'data-meter="api_calls" data-used="12"' in page
    # 10 base + 1000 x 0.01 + 500 x 0.005 + 300 x 0.001 + 2 packages x 1.00 = 24.80
    assert invoice["total"] == "24.80"
    assert 'data-estimate-total="24.80"' in page
    credits = balance["credits"][0]["available"]
    assert f'data-credits-available="{credits}"' in page
    assert 'data-next-tier="llm_tokens" data-starts-above="1000"' not in page  # gpt-4o is in its last tier
    days = re.search(r'data-days-left="(\d+)"', page)
    assert days and 0 <= int(days.group(1)) <= 31
    assert 'data-alerts="none"' in page


def test_next_tier_threshold_is_shown_before_it_is_reached(ann, now):
    send(now, tokens("a", 400))

    page = ann.get("/dashboard/acme-co/glance", HTTP_HX_REQUEST="true").content.decode()

    assert "<html" not in page and 'id="glance"' in page and 'hx-trigger="every 2s" data-poll-while-visible' in page
    assert 'data-next-tier="llm_tokens" data-starts-above="1000"' in page
    assert ">600<" in page  # to go


def test_meter_state_marks_soft_and_hard_limits(ann, now):
    send(now, tokens("a", 8500))

    page = ann.get("/dashboard/acme-co/glance").content.decode()

    assert "meter state-soft" in page and "past the soft limit" in page
    assert 'class="mark soft" x1="80.0"' in page and 'class="mark hard"' in page


def test_new_events_show_in_the_polled_partial_at_once(ann, now):
    send(now, tokens("a", 100))
    before = ann.get("/dashboard/acme-co/glance").content.decode()
    send(now, tokens("b", 23))
    after = ann.get("/dashboard/acme-co/glance").content.decode()

    assert 'data-used="100"' in before and 'data-used="123"' in after


@pytest.mark.parametrize("path", ["", "glance", "charts", "usage/"])
def test_a_page_or_poll_prices_the_period_once(ann, now, monkeypatch, path):
    # given usage this period
    send(now, tokens("a", 100))
    priced = []
    real = lines.price_period

    def counted(**kwargs):
        priced.append(kwargs["customer"])
        return real(**kwargs)

    monkeypatch.setattr(lines, "price_period", counted)

    # when the page (or its polled fragment) is read
    response = ann.get(f"/dashboard/acme-co/{path}", HTTP_HX_REQUEST="true")

    # then the open period was priced once (one plan: one price_period)
    assert response.status_code == 200
    assert len(priced) == 1


def test_charts_are_svg_with_the_same_data_as_a_table(ann, now):
    send(now, tokens("a", 100, project="chatbot"), tokens("b", 300, model="mini", project="agent"))

    page = ann.get("/dashboard/acme-co/charts", HTTP_HX_REQUEST="true").content.decode()

    assert page.count("<svg") == 4  # hourly + daily for llm_tokens, cost by model + by project
    hourly = page[page.index('id="hourly-llm_tokens"'):page.index('id="daily-llm_tokens"')]
    assert hourly.count("<rect") == selectors.HOURS_SHOWN
    assert hourly.count("<tr>") == selectors.HOURS_SHOWN + 1
    assert "<th scope=\"row\">gpt-4o</th><td class=\"num\">1.00</td>" in page  # 100 x 0.01
    assert "<th scope=\"row\">mini</th><td class=\"num\">0.30</td>" in page


def test_attributed_costs_add_up_to_the_usage_charges(acme, plan, now):
    # given: crossing a tier boundary, a package and two projects
    send(now, tokens("a", 700, project="chatbot"), tokens("b", 900, project="agent"),
         tokens("c", 50, model="mini", project="agent"),
         *[{"event_id": f"call-{i}", "meter": "api_calls", "project": "chatbot"} for i in range(15)])
    estimate = upcoming_invoice(customer=acme, now=now)
    assert estimate is not None
    usage_charges = sum(line.amount for line in estimate.lines if line.kind == "charge")
    costs = unit_costs(estimate)

    by_project = selectors.breakdown(customer=acme, now=now, by="project", costs=costs)
    by_model = selectors.breakdown(customer=acme, now=now, by="model", costs=costs)

    # then: 1000 x 0.01 + 600 x 0.005 + 50 x 0.001 + 2 x 1.00 = 15.05, split without loss
    assert usage_charges == Decimal("15.05")
    assert sum(s.cost for s in by_project) == usage_charges
    assert sum(s.cost for s in by_model) == usage_charges
    assert {s.value: s.quantities for s in by_model} == {
        "gpt-4o": {"llm_tokens": Decimal(1600)}, "mini": {"llm_tokens": Decimal(50)}, None: {"api_calls": Decimal(15)}}
    assert all(line.meter in {"llm_tokens", "api_calls"} for line in estimate.lines if line.kind == "charge")
    assert ADDITIVE


def test_runs_are_listed_most_expensive_first_with_their_steps(ann, acme, now):
    send(now,
         tokens("r1-a", 100, trace={"run_id": "run-1", "step": 2, "agent": "planner"}),
         tokens("r1-b", 50, trace={"run_id": "run-1", "step": 1, "agent": "planner"}),
         tokens("r2-a", 900, trace={"run_id": "run-2", "step": 1, "agent": "coder"}),
         tokens("r3-a", 10, model="mini", trace={"run_id": "run-3", "step": 1}),
         tokens("no-run", 5))

    page = ann.get("/dashboard/acme-co/usage/").content.decode()
    steps = ann.get("/dashboard/acme-co/runs/run-1/", HTTP_HX_REQUEST="true").content.decode()

    assert re.findall(r'data-run="(run-\d)"', page) == ["run-2", "run-1", "run-3"]
    # average gpt-4o price so far: (1000 x 0.01 + 55 x 0.005) / 1055 tokens
    price = Decimal("10.275") / 1055
    found = re.search(r'data-run="run-1" data-cost="([0-9.]+)"', page)
    assert found is not None
    run_cost = Decimal(found.group(1))
    assert abs(run_cost - 150 * price) < Decimal("1e-40")
    assert "<html" not in steps
    assert steps.index("r1-b") < steps.index("r1-a")  # step 1 before step 2
    assert f'data-run-total="{run_cost}"' in steps
    assert "1.4609<" in steps  # shown to four decimals
    assert ann.get("/dashboard/acme-co/runs/run-404/").status_code == 404


def test_breakdown_by_a_dimension_is_a_partial(ann, now):
    send(now, tokens("a", 10, project="chatbot"), tokens("b", 20, model="mini", project="agent"))

    page = ann.get("/dashboard/acme-co/usage/", {"by": "model"}, HTTP_HX_REQUEST="true").content.decode()
    unknown = ann.get("/dashboard/acme-co/usage/", {"by": "secret"}).content.decode()

    assert "<html" not in page and 'data-by="model"' in page
    assert 'data-slice="gpt-4o"' in page and 'data-slice="mini"' in page
    assert 'data-by="project"' in unknown


def test_invoices_list_shows_own_invoices_with_status_and_link(ann, acme, globex):
    mine = Invoice.objects.create(customer=acme, period_start=datetime(2026, 10, 1, tzinfo=timezone.utc),
                                  period_end=datetime(2026, 11, 1, tzinfo=timezone.utc), currency="USD",
                                  total_minor=12345)
    theirs = Invoice.objects.create(customer=globex, period_start=datetime(2026, 10, 1, tzinfo=timezone.utc),
                                    period_end=datetime(2026, 11, 1, tzinfo=timezone.utc), currency="USD",
                                    total_minor=999)

    page = ann.get("/dashboard/acme-co/invoices/").content.decode()

    assert f'href="/invoices/{mine.pk}/"' in page and "123.45 USD" in page and 'data-status="draft"' in page
    assert f'data-invoice="{theirs.pk}"' not in page
    assert ann.get(f"/invoices/{mine.pk}/").status_code == 200  # the invoice document (portal/invoices.py)


def test_settings_change_the_invoice_contact(ann, acme):
    bad = ann.post("/dashboard/acme-co/settings/", {"email": "not-an-email"})
    good = ann.post("/dashboard/acme-co/settings/", {"email": "ap@acme.example"})

    assert bad.status_code == 422
    assert good.status_code == 302
    acme.refresh_from_db()
    assert acme.email == "ap@acme.example"
    assert 'value="ap@acme.example"' in ann.get(good["Location"]).content.decode()


def test_settings_add_a_user_for_the_same_customer(ann, client, acme):
    added = ann.post("/dashboard/acme-co/settings/users", {"username": "bob", "email": "bob@acme.example",
                                                           "password": "pw-bob-1234"})
    taken = ann.post("/dashboard/acme-co/settings/users", {"username": "BOB", "password": "pw-bob-1234"})
    short = ann.post("/dashboard/acme-co/settings/users", {"username": "carol", "password": "short"})

    assert added.status_code == 302
    assert taken.status_code == 422 and "BOB@acme-co exists already" in taken.content.decode()
    assert short.status_code == 422
    assert CustomerUser.objects.get(user__username="bob@acme-co").customer == acme
    assert "bob@acme.example" in ann.get("/dashboard/acme-co/settings/").content.decode()
    client.logout()
    assert client.login(username="bob@acme-co", password="pw-bob-1234")
    assert client.get("/dashboard/").url == "/dashboard/acme-co/"
    assert client.get("/dashboard/globex/settings/").status_code == 404


def test_a_run_id_with_a_slash_and_spaces_opens(ann, now):
    send(now, tokens("r", 10, trace={"run_id": "team/run 4", "step": 1}))

    page = ann.get("/dashboard/acme-co/usage/").content.decode()
    detail = ann.get(reverse("dashboard:run", args=["acme-co", "team/run 4"]))

    assert 'href="/dashboard/acme-co/runs/team/run%204/"' in page
    assert detail.status_code == 200 and 'data-run="team/run 4"' in detail.content.decode()


# --- soft-limit alerts and alert thresholds (billing/guardrails) -------------------------------------

PERCENT_RULE = "A percentage above 0 and at most 100, with at most 2 decimal places."


def test_a_crossed_threshold_shows_in_the_polled_glance(ann, acme, now):
    # given: past the plan's soft limit (80% of 10,000 tokens), detected by the guardrails' check
    acme.email = "ap@acme.example"
    acme.save()
    send(now, tokens("a", 8500))
    before = ann.get("/dashboard/acme-co/glance", HTTP_HX_REQUEST="true").content.decode()
    alerts_check(customer_pk=acme.pk, now=now)
    # and a spend-cap alert whose email could not go anywhere, and one of the last period
    start, end = period_bounds(now)
    Alert.objects.create(customer=acme, period_start=start, period_end=end, target="spend_cap", percent=Decimal(50),
                         limit=Decimal(500), used=Decimal("250.5"), unit="USD", crossed_at=now,
                         state=Alert.State.NO_RECIPIENTS)
    last_start, _ = period_bounds(start - timedelta(days=1))
    Alert.objects.create(customer=acme, period_start=last_start, period_end=start, target="meter:api_calls",
                         percent=Decimal(90), limit=Decimal(10), used=Decimal(9), unit="call", crossed_at=last_start)

    # when
    page = ann.get("/dashboard/acme-co/glance", HTTP_HX_REQUEST="true").content.decode()

    # then: both of this period, in words, with their figures and email status; not the last period's
    assert 'data-alerts="none"' in before and "data-alert=" not in before
    assert "<html" not in page and 'data-alerts="none"' not in page
    tokens_alert = page[page.index('data-alert="meter:llm_tokens"'):page.index("</li>")]
    assert 'data-percent="80" data-status="sent"' in tokens_alert
    assert "LLM tokens: 80% reached" in tokens_alert and "8,500 of 10,000 token</span>" in tokens_alert
    assert f'when crossed at <time datetime="{now.isoformat()}">{now:%Y-%m-%d %H:%M} UTC</time>' in tokens_alert
    assert "emailed at" in tokens_alert
    assert "Spend cap: 50% reached" in page and "250.50 of 500.00 USD</span>" in page
    assert "not emailed: no address on file" in page
    assert 'data-alert="meter:api_calls"' not in page


def test_settings_list_the_effective_thresholds_and_add_and_delete_own(ann, acme, now):
    send(now, tokens("a", 6000))

    added = ann.post("/dashboard/acme-co/settings/thresholds", {"target": "meter:llm_tokens", "percent": "50"})
    page = ann.get(added["Location"]).content.decode()
    own = AlertThreshold.objects.get(customer=acme)

    assert added.status_code == 302 and added["Location"].endswith("?saved=threshold")
    assert (own.target, own.percent) == ("meter:llm_tokens", Decimal(50))
    assert "Alert threshold added." in page
    assert '<option value="meter:llm_tokens">LLM tokens</option>' in page and 'value="spend_cap"' not in page
    rows = re.findall(r'<tr data-threshold="([^"]+)" data-percent="([^"]+)" data-source="(\w+)"( data-id="\d+")?', page)
    assert rows == [("meter:llm_tokens", "50", "customer", f' data-id="{own.pk}"'),
                    ("meter:llm_tokens", "80", "rate_card", "")]
    assert "5,000 of 10,000 token" in page and "8,000 of 10,000 token" in page
    assert page.count('data-crossed="yes"') == 1 and page.count('data-crossed="no"') == 1
    assert page.count(">Delete</button>") == 1

    deleted = ann.post(f"/dashboard/acme-co/settings/thresholds/{own.pk}/delete")
    again = ann.post(f"/dashboard/acme-co/settings/thresholds/{own.pk}/delete")

    assert deleted.status_code == 302 and deleted["Location"].endswith("?saved=threshold-deleted")
    assert again.status_code == 404
    assert not AlertThreshold.objects.exists()
    assert f'data-id="{own.pk}"' not in ann.get("/dashboard/acme-co/settings/").content.decode()


def test_own_threshold_on_an_unlimited_meter_is_shown_inactive_and_can_be_deleted(ann, acme):
    own, _ = alert_threshold_create(customer=acme, target="meter:api_calls", percent=Decimal(10))

    page = ann.get("/dashboard/acme-co/settings/").content.decode()

    assert f'data-threshold="meter:api_calls" data-percent="10" data-source="customer" data-id="{own.pk}"' in page
    assert 'data-crossed="inactive"' in page
    assert f'action="/dashboard/acme-co/settings/thresholds/{own.pk}/delete"' in page


@pytest.mark.parametrize("body, message", [
    ({"target": "meter:llm_tokens", "percent": "150"}, PERCENT_RULE),
    ({"target": "meter:llm_tokens", "percent": "0"}, PERCENT_RULE),
    ({"target": "meter:llm_tokens", "percent": "33.333"}, PERCENT_RULE),
    ({"target": "meter:llm_tokens", "percent": "lots"}, "Enter a number."),
    ({"target": "meter:nope", "percent": "50"}, "of an existing meter."),
])
def test_an_invalid_threshold_answers_422_with_the_message(ann, body, message):
    response = ann.post("/dashboard/acme-co/settings/thresholds", body)

    assert response.status_code == 422
    page = response.content.decode()
    form = page[page.index('id="threshold-add"'):]
    assert message in form[form.index('<p class="error" id="id_'):]
    assert 'id="thresholds"' in page  # the whole settings page again, with the table
    assert not AlertThreshold.objects.exists()


def test_a_customer_user_cannot_change_another_customers_thresholds_nor_the_plans(ann, globex, plan):
    theirs, _ = alert_threshold_create(customer=globex, target="meter:llm_tokens", percent=Decimal(10))
    plans, _ = plan_alert_threshold_set(plan=plan, target="meter:llm_tokens", percent=Decimal(60))

    answers = [
        ann.post("/dashboard/globex/settings/thresholds", {"target": "spend_cap", "percent": "5"}),
        ann.post(f"/dashboard/globex/settings/thresholds/{theirs.pk}/delete"),
        ann.post(f"/dashboard/acme-co/settings/thresholds/{theirs.pk}/delete"),  # own page, foreign id
        ann.post(f"/dashboard/acme-co/settings/thresholds/{plans.pk}/delete"),  # the plan's: the operator's
    ]
    page = ann.get("/dashboard/acme-co/settings/").content.decode()

    assert [r.status_code for r in answers] == [404, 404, 404, 404]
    assert set(AlertThreshold.objects.values_list("pk", flat=True)) == {theirs.pk, plans.pk}
    # the plan's threshold replaces the rate card's and is listed, without a delete button
    assert 'data-threshold="meter:llm_tokens" data-percent="60" data-source="plan">' in page
    assert 'data-source="rate_card"' not in page and ">Delete</button>" not in page


@pytest.mark.django_db(transaction=True)  # autocommit, as a request runs: the reads' atomic block is the outermost
def test_a_lost_dimension_set_is_a_503_page_not_a_server_error(ann, now):
    from billing.usage import rollups
    from billing.usage import selectors as usage_selectors
    from billing.usage.models import DimensionSet

    send(now, tokens("a", 10), tokens("b", 20, model="mini"))
    rollups.rollup_until_current(now=now + timedelta(minutes=5))
    assert ann.get("/dashboard/acme-co/usage/", {"by": "model"}).status_code == 200
    DimensionSet.objects.filter(key=rollups.dims_key({"model": "mini"})).delete()
    usage_selectors._DIMENSIONS.clear()

    page = ann.get("/dashboard/acme-co/usage/", {"by": "model"})

    assert page.status_code == 503 and page["Retry-After"] == "60"
    assert page["Content-Type"].startswith("text/html")
    assert "Temporarily unavailable" in page.content.decode() and "rollups_drift" in page.content.decode()


def test_the_glance_estimate_applies_the_credits_and_tax_its_invoice_will(ann, admin, acme, now):
    # given: a 10% tax rate and 25.00 of prepaid credits, then 1,500 gpt-4o tokens (12.50)
    acme.tax_rate = Decimal("10")
    acme.save()
    admin.post("/api/v1/customers/acme-co/credits", {"amount": "25", "idempotency_key": "g1"}, format="json")
    send(now, tokens("a", 1000), tokens("b", 500))

    # when
    page = ann.get("/dashboard/acme-co/").content.decode()
    invoice = ann.get("/api/v1/customers/acme-co/upcoming-invoice").json()

    # then: 10 base + 12.50 = 22.50, less the 12.50 of credits the tokens drew = 10.00, plus 10% tax = 11.00
    assert (invoice["subtotal"], invoice["credits"], invoice["tax"], invoice["total"]) == ("22.50", "12.50", "1.00", "11.00")
    assert 'data-estimate-total="11.00"' in page
    assert 'data-estimate-subtotal="22.50"' in page and 'data-estimate-credits="12.50"' in page
    assert 'data-estimate-tax="1.00"' in page and "tax 10%" in page
