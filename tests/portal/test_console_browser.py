"""The operator's walk through the console in a real browser (Debian's Chromium driven by Playwright against
pytest-django's live server): from an empty database with only the staff user, using only the console, two
meters and a plan are created and a rate card with a graduated and a package charge published; a customer
is created, put on the plan, given an ingest key and credits; usage is sent with that key, as the
customer's app would; its invoice is finalized with lines on both charges; then each step is in the audit
log with the operator as its actor. One helper per step (the catalog's are in ``console_walk``)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model

from billing.common.calendar import period_bounds, previous_period
from billing.invoicing.models import Invoice
from tests.portal import console_walk as walk
from tests.portal.test_dashboard_browser import chromium, page, shots  # noqa: F401  (the browser, a page, screenshots)

pytestmark = [pytest.mark.browser, pytest.mark.ledger, pytest.mark.django_db(transaction=True)]
USERNAME, PASSWORD = "ops", "pw-ops-123456"


def publish_a_rate_card(tab: Any, base: str, effective_from: datetime) -> None:
    """Meters, the plan ``pro`` and its first version: 49 USD a month, tokens graduated (0.01 up to 1,000,
    then 0.005), API calls in packages of 100 at 2 USD; in effect from ``effective_from``."""
    walk.create_meter(tab, base, key="llm_tokens", name="LLM tokens", aggregation="sum", unit="token")
    walk.create_meter(tab, base, key="api_calls", name="API calls", aggregation="sum", unit="call")
    walk.create_plan(tab, base, key="pro", name="Pro", currency="USD")
    tab.get_by_label("Base fee per period (USD)", exact=True).fill("49")
    tab.locator("h1").click()
    walk.settle(tab)
    graduated = walk.add_charge(tab, meter="llm_tokens", model="graduated")
    walk.fill_tiers(tab, graduated, [("1000", "0.01"), (None, "0.005")])
    walk.add_charge(tab, meter="api_calls", model="package")
    walk.fill_fields(tab, {"Units in a package": "100", "Price of a package": "2"})
    assert "No problems found." in walk.problems_shown(tab)
    walk.publish(tab, base, "pro", effective_from=effective_from.strftime("%Y-%m-%dT%H:%M"))


def log_in(tab: Any, base: str) -> None:
    tab.goto(base + "/console/customers/")
    assert "/accounts/login/" in tab.url
    tab.fill("input[name=username]", USERNAME)
    tab.fill("input[name=password]", PASSWORD)
    tab.click("button[type=submit]")
    tab.wait_for_url(base + "/console/customers/")


def create_customer(tab: Any, base: str, customer_id: str, name: str, email: str) -> None:
    tab.goto(base + "/console/customers/")
    tab.fill("#customer-external_id", customer_id)
    tab.fill("#customer-name", name)
    tab.fill("#customer-email", email)
    tab.fill("#customer-invoice_email", email)
    tab.fill("#customer-billing_address", "1 Main St\nSpringfield")
    tab.click("#customer-create button[type=submit]")
    tab.wait_for_url(f"{base}/console/customers/{customer_id}/?saved=created")
    tab.get_by_text("Customer created.").wait_for()


def subscribe(tab: Any, base: str, customer_id: str, plan: str, start: datetime) -> None:
    """On the customer's page, put it on ``plan`` from ``start`` (the section is swapped in place)."""
    tab.goto(f"{base}/console/customers/{customer_id}/")
    tab.select_option("#subscription-plan", plan)
    tab.check("#subscription-form input[name=when][value=date]")
    tab.fill("#subscription-start", start.strftime("%Y-%m-%dT%H:%M"))
    tab.click("#subscription-form button[type=submit]")
    tab.locator(f'#subscription tr[data-plan="{plan}"]').wait_for()
    assert tab.url == f"{base}/console/customers/{customer_id}/"  # a fragment, no page load


def create_ingest_key(tab: Any, base: str, customer_id: str) -> str:
    """A key restricted to the customer, for its app to send usage; the secret is read from the page, once."""
    tab.goto(f"{base}/console/customers/{customer_id}/")
    tab.fill("#key-name", "production app")
    tab.select_option("#key-scope", "ingest")
    tab.click("#key-form button[type=submit]")
    secret = tab.locator("#new-key code")
    secret.wait_for()
    return str(secret.inner_text()).strip()


def send_usage(base: str, key: str, customer_id: str, at: datetime) -> None:
    """What the customer's app does with its key: 1,500 tokens and 250 API calls, at ``at``."""
    events = [{"event_id": "walk-tokens", "customer": customer_id, "meter": "llm_tokens", "quantity": "1500",
               "timestamp": at.isoformat()},
              {"event_id": "walk-calls", "customer": customer_id, "meter": "api_calls", "quantity": "250",
               "timestamp": at.isoformat()}]
    with httpx.Client(base_url=base + "/api/v1", headers={"Authorization": f"Bearer {key}"}) as api:
        response = api.post("/events/batch", json={"events": events})
    assert response.status_code == 200 and response.json()["accepted"] == 2, response.text


def grant_credits(tab: Any, base: str, customer_id: str, amount: str, currency: str) -> None:
    tab.goto(f"{base}/console/customers/{customer_id}/")
    tab.fill("#grant-amount", amount)
    tab.fill("#grant-currency", currency)
    tab.fill("#grant-reason", "welcome credit")
    tab.click("#grant-form button[type=submit]")
    tab.locator("#credits .notice", has_text=f"Granted {amount} {currency}").wait_for()
    assert tab.locator("#grant-list tr[data-grant]").count() == 1


def a_refused_grant_says_why_beside_the_amount(tab: Any, base: str, customer_id: str) -> None:
    """The answer is swapped in place: the message beside the amount, said once, the summary linking to it."""
    tab.goto(f"{base}/console/customers/{customer_id}/")
    tab.fill("#grant-amount", "-5")
    tab.fill("#grant-currency", "USD")
    tab.click("#grant-form button[type=submit]")
    error = tab.locator('#grant-form [data-error-for="amount"]')
    error.wait_for()
    assert error.inner_text() == "Must be a positive amount."
    assert tab.locator("#grant-form").inner_text().count("Must be a positive amount.") == 1
    assert tab.locator('#grant-form [data-error-summary] a[href="#grant-amount"]').count() == 1
    assert tab.url == f"{base}/console/customers/{customer_id}/"


def finalize_invoice(tab: Any, base: str, customer_id: str, period: datetime) -> None:
    """From the invoices page: close the ended periods, then finalize the customer's draft of ``period``."""
    tab.goto(base + "/console/")
    tab.get_by_role("navigation", name="Console").get_by_role("link", name="Invoices").click()
    tab.wait_for_url(base + "/console/invoices/")
    tab.click("#invoices-prepare button[type=submit]")
    tab.get_by_text("draft(s) to review and finalize").wait_for()
    draft = Invoice.objects.get(customer__external_id=customer_id, period_start=period, kind="invoice")
    tab.click(f"#invoice-{draft.pk} button:has-text('Finalize')")
    tab.locator(f'#invoice-{draft.pk}[data-status="finalized"]').wait_for()


def audit_actions_by(tab: Any, base: str, actor: str) -> list[tuple[str, str]]:
    """(who, action) of each row of the console's audit log filtered by ``actor``."""
    tab.goto(base + "/console/audit/")
    tab.fill("input[name=actor]", actor)
    tab.click("form.filters button[type=submit]")
    tab.wait_for_url("**/console/audit/?actor=*")
    rows = tab.locator("table tbody tr")
    return [(rows.nth(i).locator("td").nth(1).inner_text().strip(), rows.nth(i).locator("td").nth(2).inner_text().strip())
            for i in range(rows.count())]


def test_the_operator_sets_up_and_bills_a_customer_from_the_console(page: Any, live_server: Any,  # noqa: F811
                                                                   shots: Path) -> None:  # noqa: F811
    # given: an empty database but for the operator's login
    ops = get_user_model().objects.create_user(USERNAME, password=PASSWORD, is_staff=True)
    base = live_server.url
    billed_period = previous_period(previous_period(period_bounds(datetime.now(timezone.utc))[0])[0])[0]

    # when
    log_in(page, base)
    publish_a_rate_card(page, base, billed_period)
    create_customer(page, base, "acme-co", "Acme Co", "ap@acme.test")
    subscribe(page, base, "acme-co", "pro", billed_period)
    key = create_ingest_key(page, base, "acme-co")
    send_usage(base, key, "acme-co", billed_period + timedelta(days=2))
    a_refused_grant_says_why_beside_the_amount(page, base, "acme-co")
    grant_credits(page, base, "acme-co", "20", "USD")
    page.screenshot(path=str(shots / "console-customer.png"), full_page=True)
    finalize_invoice(page, base, "acme-co", billed_period)
    page.screenshot(path=str(shots / "console-invoices.png"), full_page=True)

    # then: each step, by the operator, in the audit log
    invoice = Invoice.objects.get(customer__external_id="acme-co", period_start=billed_period, kind="invoice")
    assert invoice.status == "finalized" and invoice.number
    charged = {(line.kind, line.model): Decimal(0) for line in invoice.lines.all()}
    for line in invoice.lines.all():
        charged[line.kind, line.model] += line.amount
    assert charged[("base_fee", "")] == Decimal("49")
    assert charged[("charge", "graduated")] == Decimal("12.5")  # 1,000 at 0.01 and 500 at 0.005
    assert charged[("charge", "package")] == Decimal("6")  # 250 calls: 3 packages of 100 at 2
    steps = audit_actions_by(page, base, f"user:{ops.pk}")
    for action in ("meter.created", "plan.created", "ratecard.published", "customer.created", "api_key.created",
                   "subscription.created", "credits.granted", "invoice.finalized"):
        assert (f"user {USERNAME}", action) in steps, (action, steps)
