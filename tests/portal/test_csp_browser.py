"""The pages work under the Content-Security-Policy in a real browser (Debian's Chromium, as in
test_dashboard_browser.py): the login, the dashboard with its polled parts, the pricing console's htmx editor,
the admin, an invoice document and the Swagger page, with no violation reported and the secure cookies of production settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from billing.invoicing.services import invoice_draft_refresh
from tests.portal.test_dashboard_browser import PASSWORD, Tenant, log_in, tokens

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Every violation the page sees, recorded before any of its own scripts runs (init scripts are the browser's,
# not the page's: the policy does not apply to them).
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => window.__violations.push(
  `${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    from tests.conftest import CHROMIUM

    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


class Watched:
    """A page whose policy violations and console errors are collected."""

    def __init__(self, context: Any) -> None:
        context.add_init_script(RECORD_VIOLATIONS)
        self.page = context.new_page()
        self.page.set_default_timeout(15_000)
        self.console: list[str] = []
        # errors of the page's scripts; a missing /favicon.ico (the admin names none) is no script's
        self.page.on("console", lambda m: self.console.append(m.text)
                     if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
        self.page.on("pageerror", lambda e: self.console.append(str(e)))

    def problems(self) -> list[str]:
        return [*self.page.evaluate("window.__violations || []"), *self.console]


@pytest.fixture
def watched(chromium: Any) -> Iterator[Watched]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    yield Watched(context)
    context.close()


def test_the_dashboard_logs_in_polls_and_shows_its_bars_under_the_policy(watched, live_server, settings):
    assert settings.SESSION_COOKIE_SECURE and settings.CSRF_COOKIE_SECURE  # production's, over http://localhost
    tenant = Tenant(live_server.url)
    tenant.post_events(tokens(500))
    page, base = watched.page, live_server.url

    response = page.goto(base + "/accounts/login/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    log_in(page, base)
    assert watched.problems() == []

    with page.expect_response(lambda r: r.url.endswith("/dashboard/acme-co/glance") and r.status == 200):
        pass  # htmx polls the glance every 2 s: no eval needed for its visibility check
    page.goto(base + "/dashboard/acme-co/usage")
    page.goto(base + "/dashboard/acme-co/")
    page.wait_for_selector("#glance .meter")
    assert watched.problems() == []


def test_the_console_editor_admin_invoice_and_swagger_work_under_the_policy(watched, live_server):
    tenant = Tenant(live_server.url)
    get_user_model().objects.create_user("ops", password=PASSWORD, is_staff=True, is_superuser=True)
    page, base = watched.page, live_server.url
    page.goto(base + "/admin/login/")
    page.fill("input[name=username]", "ops")
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url(base + "/admin/")
    page.goto(base + "/admin/catalog/subscription/add/")  # date widgets, select filters: the admin's own scripts
    page.wait_for_selector(".datetimeshortcuts")

    page.goto(base + "/console/")
    page.goto(base + "/console/plans/pro/versions/new")  # the editor validates as one types, through htmx
    with page.expect_response(lambda r: r.url.endswith("/versions/new/validate") and r.status == 200):
        page.fill("input[name=base_fee]", "not a number")
        page.press("input[name=base_fee]", "Tab")  # a change
    page.wait_for_selector("#problems")
    tiers = page.locator("tr.tier").count()
    with page.expect_response(lambda r: r.url.endswith("/versions/new/tiers")):  # hx-vals, read as JSON (no eval)
        page.get_by_role("button", name="Add tier").first.click()
    page.wait_for_function(f"() => document.querySelectorAll('tr.tier').length === {tiers + 1}")
    # a pricing model's select reshapes the form by a request of its own; the form's validation skips its change
    validations: list[str] = []
    page.on("request", lambda r: validations.append(r.url) if r.url.endswith("/versions/new/validate") else None)
    model = page.locator("select.reshapes[hx-post]").first
    other = next(v for v in model.locator("option").evaluate_all("(os) => os.map((o) => o.value)")
                 if v != model.input_value())
    with page.expect_response(lambda r: r.url.endswith("/versions/new/tiers")):
        model.select_option(other)
    page.wait_for_timeout(500)
    assert validations == []

    invoice = invoice_draft_refresh(customer=tenant.acme, period_start=tenant.now.replace(
        day=1, hour=0, minute=0, second=0, microsecond=0))
    assert invoice is not None
    with page.expect_response(lambda r: r.url.endswith("/invoices/invoice.css") and r.status == 200):
        page.goto(f"{base}/invoices/{invoice.pk}/")  # the document's rules, linked rather than inline
    page.goto(f"{base}/invoices/{invoice.pk}/?print=1")

    page.goto(base + "/api/docs")
    page.wait_for_selector(".swagger-ui .opblock")  # the start script ran and the schema loaded
    assert watched.problems() == []
