"""The dashboard in a real browser: Playwright drives Debian's Chromium (/usr/bin/chromium, never a
downloaded build) against pytest-django's live server. Marked ``browser``: skipped without Chromium,
failed instead under REQUIRE_SERVICES=1 (tests/conftest.py).

Screenshots go to ``$TOLLGATE_SCREENSHOTS_DIR`` when it is set (``docs/screenshots`` for the README),
else to the test's temporary folder.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from billing.catalog.models import Plan
from billing.catalog.services import catalog_import, subscription_set
from billing.customers.models import Customer
from billing.customers.services import api_key_create, customer_create, customer_user_create
from billing.guardrails.alerts import alerts_check
from tests.conftest import CHROMIUM
from tests.portal.test_dashboard import CATALOG, dashboard_urls

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PASSWORD = "pw-ann-123456"


@pytest.fixture(scope="module")  # stopped after this module: later tests (asyncio.run) need no loop running
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # sync Playwright keeps an event loop in this thread; the ORM calls the tests make are still plain sync
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TOLLGATE_SCREENSHOTS_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Tenant:
    def __init__(self, base: str) -> None:
        now = datetime.now(timezone.utc)
        self.now = now
        catalog_import(text=CATALOG, actor="t")
        self.acme = customer_create(external_id="acme-co", name="Acme Co")
        self.globex = customer_create(external_id="globex", name="Globex")
        for customer in (self.acme, self.globex):
            subscription_set(customer=customer, plan=Plan.objects.get(key="pro"), start=now - timedelta(days=40),
                             now=now, actor="t")
        self.acme.projects.create(key="chatbot")
        self.acme.projects.create(key="agent")
        self.globex.projects.create(key="chatbot")
        customer_user_create(customer=self.acme, username="ann", password=PASSWORD)
        _, ingest_key = api_key_create(name="ingest", scope="ingest")
        _, read_key = api_key_create(name="read acme", scope="read", customer=self.acme)
        self.ingest = httpx.Client(base_url=base + "/api/v1", headers={"Authorization": f"Bearer {ingest_key}"})
        self.read = httpx.Client(base_url=base + "/api/v1", headers={"Authorization": f"Bearer {read_key}"})
        self.sequence = 0

    def post_events(self, *events: dict[str, Any], customer: Customer | None = None, ago: timedelta | None = None
                    ) -> None:
        period_start = self.now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        body = []
        for e in events:
            self.sequence += 1
            at = max(datetime.now(timezone.utc) - (ago or timedelta(seconds=30)), period_start)
            body.append({"event_id": f"b-{self.sequence}", "customer": (customer or self.acme).external_id,
                         "timestamp": at.isoformat(), **e})
        response = self.ingest.post("/events/batch", json={"events": body})
        assert response.status_code == 200 and response.json()["accepted"] == len(body), response.text


def tokens(quantity: int, model: str = "gpt-4o", project: str = "chatbot", **extra: Any) -> dict[str, Any]:
    return {"meter": "llm_tokens", "quantity": str(quantity), "project": project, "dimensions": {"model": model},
            **extra}


@pytest.fixture
def tenant(live_server: Any) -> Iterator[Tenant]:
    tenant = Tenant(live_server.url)
    yield tenant
    tenant.ingest.close()
    tenant.read.close()


def log_in(page: Any, base: str, username: str = "ann", password: str = PASSWORD) -> None:
    page.goto(base + "/dashboard/")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/dashboard/acme-co/")


def attr(page: Any, selector: str, name: str) -> str:
    value = page.get_attribute(selector, name)
    assert value is not None, (selector, name)
    return str(value)


def test_log_in_and_see_the_numbers_of_the_api(page, live_server, tenant, shots):
    # given: three days of history (so the charts have a shape), then two agent runs and some API calls
    history = 0
    for i in range(60):
        quantity = 10 + (i * 37) % 41
        history += quantity
        tenant.post_events(tokens(quantity, model=("gpt-4o", "mini")[i % 2], project=("chatbot", "agent")[i % 3 % 2]),
                           ago=timedelta(hours=i * 1.2, minutes=7))
    tenant.post_events(tokens(700, trace={"run_id": "run-a", "step": 1, "agent": "planner"}),
                       tokens(600, project="agent", trace={"run_id": "run-a", "step": 2, "agent": "planner"}),
                       tokens(2500, model="mini", project="agent", trace={"run_id": "run-b", "step": 1}),
                       *[{"meter": "api_calls", "project": "chatbot"} for _ in range(25)])

    # when
    log_in(page, live_server.url)

    # then
    usage = {r["meter"]: r["quantity"] for r in tenant.read.get("/customers/acme-co/usage",
                                                                params={"granularity": "month"}).json()["data"]}
    invoice = tenant.read.get("/customers/acme-co/upcoming-invoice").json()
    assert attr(page, '[data-meter="llm_tokens"]', "data-used") == usage["llm_tokens"] == str(3800 + history)
    assert attr(page, '[data-meter="api_calls"]', "data-used") == usage["api_calls"] == "25"
    assert attr(page, "[data-estimate-total]", "data-estimate-total") == invoice["total"]
    assert page.inner_text("[data-estimate-total]") == invoice["total"]
    assert f"{3800 + history:,} of 10,000 token" in page.inner_text('[data-meter="llm_tokens"]')
    assert page.locator("figure.chart svg").count() == 6  # hourly + daily for two meters, cost by model and by project
    page.screenshot(path=str(shots / "dashboard-overview.png"), full_page=True)

    page.click("text=Usage & runs")
    page.wait_for_selector("#runs")
    page.click('[data-run="run-b"] a')
    page.wait_for_selector('#run-steps [data-run="run-b"]')
    assert page.url.endswith("/dashboard/acme-co/usage/")  # the steps came in without leaving the page
    page.screenshot(path=str(shots / "dashboard-usage-and-runs.png"), full_page=True)


def test_new_events_show_without_a_reload(page, live_server, tenant, shots):
    # given
    tenant.post_events(tokens(100))
    log_in(page, live_server.url)
    assert attr(page, '[data-meter="llm_tokens"]', "data-used") == "100"
    page.evaluate("window.__same_page = true")
    total_before = attr(page, "[data-estimate-total]", "data-estimate-total")

    # when: events arrive through the API while the page is open, crossing the soft limit (8,000 tokens)
    tenant.post_events(tokens(4000), tokens(4000, model="mini"))

    # then: within a few seconds, on the same page (no navigation)
    page.wait_for_selector('[data-meter="llm_tokens"][data-used="8100"]', timeout=6000)
    assert page.evaluate("window.__same_page") is True
    assert attr(page, "[data-estimate-total]", "data-estimate-total") != total_before
    assert "past the soft limit" in page.inner_text('[data-meter="llm_tokens"]')
    invoice = tenant.read.get("/customers/acme-co/upcoming-invoice").json()
    page.wait_for_selector(f'[data-estimate-total="{invoice["total"]}"]', timeout=6000)
    # the charts follow too (polled every 3 s): the hourly chart's table holds the new total
    page.wait_for_function("() => document.querySelector('#hourly-llm_tokens title').textContent.includes('8,100')",
                           timeout=8000)
    # and the soft-limit alert the worker records a few seconds after ingest shows on the same page
    tenant.acme.email = "ap@acme.example"
    tenant.acme.save(update_fields=["email"])
    alerts_check(customer_pk=tenant.acme.pk, now=datetime.now(timezone.utc))
    page.wait_for_selector('[data-alert="meter:llm_tokens"][data-percent="80"][data-status="sent"]', timeout=6000)
    assert "LLM tokens: 80% reached" in page.inner_text(".alerts")
    assert page.evaluate("window.__same_page") is True
    page.screenshot(path=str(shots / "dashboard-live-soft-limit.png"), full_page=True)


def test_download_the_csv_and_compare_it_with_the_usage_endpoint(page, live_server, tenant):
    tenant.post_events(tokens(100), tokens(50, model="=cmd()", project="agent"), tokens(70, model="mini"),
                       *[{"meter": "api_calls", "project": "agent"} for _ in range(3)])
    log_in(page, live_server.url)

    with page.expect_download() as info:
        page.click('[data-csv="hour"]')
    download = info.value
    rows = list(csv.reader(io.StringIO(Path(download.path()).read_text())))

    data = tenant.read.get("/customers/acme-co/usage", params={"granularity": "hour", "group_by": "project,model"}
                           ).json()["data"]
    assert download.suggested_filename.startswith("usage-acme-co-")
    assert rows[0] == ["meter", "start", "end", "project", "model", "quantity"]
    expected = [[r["meter"], r["start"], r["end"], r["group"]["project"] or "", r["group"]["model"] or "", r["quantity"]]
                for r in data]
    expected = [[*row[:4], "'" + row[4] if row[4].startswith("=") else row[4], row[5]] for row in expected]
    assert rows[1:] == expected
    assert ["llm_tokens", rows[1][1], rows[1][2], "agent", "'=cmd()", "50"] in rows


def test_a_customer_user_cannot_open_another_customers_pages(page, live_server, tenant):
    tenant.post_events(tokens(9_876, trace={"run_id": "run-1"}), customer=tenant.globex)
    tenant.post_events(tokens(5))
    log_in(page, live_server.url)

    for url in dashboard_urls("globex"):
        response = page.goto(live_server.url + url)
        assert response is not None and response.status == 404, url
        text = page.inner_text("body")  # what the user sees (the raw HTML holds a random CSRF token)
        assert "9,876" not in text and "9876" not in text and "Globex" not in page.content(), url
    response = page.goto(live_server.url + "/api/v1/customers/globex/usage.csv")
    assert response is not None and response.status == 404
    # and the own pages still answer
    for url in dashboard_urls("acme-co"):
        response = page.goto(live_server.url + url)
        expected = 404 if "/runs/" in url else 200  # acme has no run-1
        assert response is not None and response.status == expected, url


def test_settings_page(page, live_server, tenant, shots):
    log_in(page, live_server.url)
    page.click("text=Settings")
    page.fill("input[name=email]", "ap@acme.example")
    page.click("text=Save contact")
    page.wait_for_selector("text=Invoice contact saved.")
    page.fill("input[name=username]", "bob")
    page.fill('form[action$="settings/users"] input[name=email]', "bob@acme.example")
    page.fill("input[name=password]", "pw-bob-123456")
    page.click("text=Add user")
    page.wait_for_selector("text=User added.")
    assert "bob@acme.example" in page.inner_text("#users")
    page.select_option("select[name=target]", "meter:llm_tokens")
    page.fill("input[name=percent]", "50")
    page.click("text=Add threshold")
    page.wait_for_selector("text=Alert threshold added.")
    assert page.get_attribute('#thresholds tr[data-source="customer"]', "data-percent") == "50"
    tenant.acme.refresh_from_db()
    assert tenant.acme.email == "ap@acme.example"
    page.screenshot(path=str(shots / "dashboard-settings.png"), full_page=True)


def test_kill_a_run_from_its_page(page, live_server, tenant):
    tenant.post_events(tokens(10, trace={"run_id": "loop-1"}))
    log_in(page, live_server.url)
    page.goto(live_server.url + "/dashboard/acme-co/runs/loop-1/")
    asked: list[str] = []

    def confirm(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", confirm)
    page.click("button[data-action=kill]")
    page.wait_for_selector('#run-guard [data-run-state="killed"]')  # swapped in place, no reload

    assert asked and "Kill run loop-1?" in asked[0]
    assert page.is_visible("button[data-action=release]")
    refused = tenant.ingest.post("/events", json={"event_id": "after-kill", "customer": "acme-co",
                                                  **tokens(1, trace={"run_id": "loop-1"}),
                                                  "timestamp": datetime.now(timezone.utc).isoformat()})
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "circuit_open"
