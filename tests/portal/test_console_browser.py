"""The operator's walk through the console in a real browser (Debian's Chromium driven by Playwright against
pytest-django's live server): from an empty database with one staff user and one plan, using only the
console, a customer is created, put on the plan, given credits, and its invoice finalized; then each step is
in the audit log with the operator as its actor. One helper per step, so that a walk can add steps (the
catalog's: a rate card published from the console) without touching the others."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from billing.catalog.services import catalog_import
from billing.common.calendar import period_bounds, previous_period
from billing.invoicing.models import Invoice
from tests import factories
from tests.portal.test_dashboard_browser import chromium, page, shots  # noqa: F401  (the browser, a page, screenshots)

pytestmark = [pytest.mark.browser, pytest.mark.ledger, pytest.mark.django_db(transaction=True)]
USERNAME, PASSWORD = "ops", "pw-ops-123456"


def an_existing_plan() -> None:
    """The plan the walk subscribes to (key ``pro``, 49 USD a month). Until the console publishes rate cards
    this is the catalog file's; a walk step that publishes one from the console replaces it."""
    catalog_import(text=factories.catalog(factories.plan(
        "pro", [{"meter": "llm_tokens", "model": "per_unit", "unit_price": "0.01"}], name="Pro", base_fee="49")),
        actor="system")


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
    # given: an empty database but for the operator's login and a plan
    ops = get_user_model().objects.create_user(USERNAME, password=PASSWORD, is_staff=True)
    an_existing_plan()
    base = live_server.url
    billed_period = previous_period(previous_period(period_bounds(datetime.now(timezone.utc))[0])[0])[0]

    # when
    log_in(page, base)
    create_customer(page, base, "acme-co", "Acme Co", "ap@acme.test")
    subscribe(page, base, "acme-co", "pro", billed_period)
    a_refused_grant_says_why_beside_the_amount(page, base, "acme-co")
    grant_credits(page, base, "acme-co", "20", "USD")
    page.screenshot(path=str(shots / "console-customer.png"), full_page=True)
    finalize_invoice(page, base, "acme-co", billed_period)
    page.screenshot(path=str(shots / "console-invoices.png"), full_page=True)

    # then: each step, by the operator, in the audit log
    invoice = Invoice.objects.get(customer__external_id="acme-co", period_start=billed_period, kind="invoice")
    assert invoice.status == "finalized" and invoice.number
    steps = audit_actions_by(page, base, f"user:{ops.pk}")
    for action in ("customer.created", "subscription.created", "credits.granted", "invoice.finalized"):
        assert (f"user {USERNAME}", action) in steps, (action, steps)
