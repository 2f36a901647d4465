"""Steps of an operator's walk through the console, for browser tests to compose: each step uses only
what an operator sees (pages, fields by their labels, buttons by their words) and waits until htmx has
answered. Import them: ``from tests.portal.console_walk import create_meter, ...``.

Every helper takes a Playwright ``page`` (sync API) and, where it navigates, the live server's ``base`` URL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.conftest import CHROMIUM


@contextmanager
def chromium_page() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright: one page, closed afterwards."""
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # sync Playwright keeps a loop in this thread
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def settle(page: Any) -> None:
    """Wait until no htmx request is in flight (htmx marks the element while one is)."""
    page.wait_for_function("() => !document.querySelector('.htmx-request')")


def log_in_staff(page: Any, base: str, username: str, password: str) -> None:
    page.goto(base + "/console/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/console/")


def create_meter(page: Any, base: str, *, key: str, name: str, aggregation: str = "sum", unit: str = "unit",
                 unique_by: str = "") -> None:
    """Meters page, "New meter" form: the list shows the meter afterwards (no page reload)."""
    page.goto(base + "/console/meters/")
    page.get_by_label("Key", exact=True).fill(key)
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("How a period's events add up").select_option(aggregation)
    page.get_by_label("Unit", exact=True).fill(unit)
    if unique_by:
        page.get_by_label("Dimension counted").fill(unique_by)
    page.get_by_role("button", name="Create meter").click()
    page.wait_for_selector(f'#meter-list tr[data-meter="{key}"]')


def create_plan(page: Any, base: str, *, key: str, name: str, currency: str = "USD") -> None:
    """"New plan" from the console's index; ends in the editor of its first version."""
    page.goto(base + "/console/")
    page.get_by_role("link", name="New plan").click()
    page.get_by_label("Key", exact=True).fill(key)
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Currency (ISO code)", exact=True).fill(currency)
    page.get_by_role("button", name="Create plan and draft its first version").click()
    page.wait_for_url(f"{base}/console/plans/{key}/versions/new")


def _click_and_settle(page: Any, selector: str) -> None:
    page.click(selector)
    settle(page)


def add_charge(page: Any, *, meter: str, model: str) -> int:
    """"Add charge", then its meter and pricing model; returns the charge's index."""
    index = page.locator("fieldset.charge").count()
    _click_and_settle(page, "#add-charge")
    page.wait_for_selector(f"#charge-{index}")
    page.select_option(f"#charges-{index}-meter", meter)
    settle(page)
    page.select_option(f"#charges-{index}-model", model)  # the fields of the model replace the old ones
    settle(page)
    return index


def fill_tiers(page: Any, charge: int, tiers: list[tuple[str | None, str]]) -> None:
    """Tiers as (up to, price per unit), the last one open-ended: "Add tier" until there are enough."""
    while page.locator(f"#tiers-{charge} tr.tier").count() < len(tiers):
        _click_and_settle(page, f"#charge-{charge} button.add-tier")
    for index, (up_to, price) in enumerate(tiers):
        if up_to is not None:
            page.fill(f"#charges-{charge}-tiers-{index}-up_to", up_to)
        page.fill(f"#charges-{charge}-tiers-{index}-unit_price", price)
    page.locator("h1").click()  # leave the last field: its change is checked
    settle(page)


def fill_fields(page: Any, values: dict[str, str]) -> None:
    """Fields of the editor by their labels, e.g. {"Units in a package": "1000"} (within the last charge)."""
    charge = page.locator("fieldset.charge").last
    for label, value in values.items():
        charge.get_by_label(label, exact=True).fill(value)
    page.locator("h1").click()
    settle(page)


def problems_shown(page: Any) -> str:
    return str(page.inner_text("#problems"))


def save_draft(page: Any) -> None:
    _click_and_settle(page, "#save-draft")
    page.wait_for_selector("#draft-status >> text=Draft saved at")


def leave_and_resume(page: Any, base: str, plan: str) -> None:
    """Go elsewhere, come back through the plan's page: the saved draft is there again."""
    page.goto(base + "/console/")
    page.goto(f"{base}/console/plans/{plan}/")
    page.get_by_role("link", name="Resume the draft").click()
    page.wait_for_selector("#draft-status >> text=Resumed the draft")


def show_diff(page: Any) -> dict[str, str]:
    """"Compare with the version in effect": {what: added|removed|changed|same}."""
    _click_and_settle(page, "#show-diff")
    page.wait_for_selector("#diff-table")
    rows = page.locator("#diff-table tbody tr")
    return {rows.nth(i).get_attribute("data-what"): rows.nth(i).get_attribute("data-change") for i in range(rows.count())}


def simulate(page: Any) -> str:
    """"Simulate this period": the simulation's text (per customer, line by line)."""
    _click_and_settle(page, "#simulate")
    page.wait_for_selector("#simulation >> text=Total difference")
    return str(page.inner_text("#simulation"))


def publish(page: Any, base: str, plan: str, *, effective_from: str | None = None) -> None:
    """Publish (optionally from a UTC date and time ``YYYY-MM-DDTHH:MM``): lands on the plan's page."""
    if effective_from:
        page.fill("#effective_from", effective_from)
    page.click("#publish")
    page.wait_for_url(f"{base}/console/plans/{plan}/#v*")


def audit_rows(page: Any, base: str, **filters: str) -> list[tuple[str, str, str]]:
    """The console's audit log: (who, action, object) per row, newest first."""
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    page.goto(f"{base}/console/audit/?{query}")
    cells = page.locator("table tbody tr").evaluate_all(
        "rows => rows.map(r => Array.from(r.querySelectorAll('td')).map(td => td.innerText.trim()))")
    return [(row[1], row[2], row[3]) for row in cells if len(row) >= 4]
