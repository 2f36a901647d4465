"""The catalog set-up in a real browser, using only the console: a meter, a plan, its first rate-card version
with a graduated and a package charge, saved as a draft, left and resumed, compared, simulated and
published; every step in the audit log with the operator as its actor. Marked ``browser``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from billing.catalog.models import Meter, RateCardDraft, RateCardVersion
from billing.catalog.services import catalog_import, subscription_set
from billing.common.auth import Principal
from billing.customers.services import customer_create
from billing.usage.services import events_ingest
from tests.portal import console_walk as walk

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PASSWORD = "pw-ops-123456"


@pytest.fixture
def console(live_server: Any) -> Iterator[tuple[Any, str]]:
    get_user_model().objects.create_user("ops", password=PASSWORD, is_staff=True)
    with walk.chromium_page() as page:
        walk.log_in_staff(page, live_server.url, "ops", PASSWORD)
        yield page, live_server.url


def test_an_operator_sets_up_a_plan_from_scratch_in_the_console(console, tmp_path):
    page, base = console
    shots = Path(os.environ.get("TOLLGATE_SCREENSHOTS_DIR") or tmp_path)
    # given: a customer with usage on a plan published before (not through the console: it is not under test)
    catalog_import(text="meters: [{key: api_calls, name: API calls, unit: call, aggregation: sum}]", actor="t")

    walk.create_meter(page, base, key="llm_tokens", name="LLM tokens", aggregation="sum", unit="token")
    walk.create_plan(page, base, key="team", name="Team", currency="USD")
    assert "No problems found." in walk.problems_shown(page)

    graduated = walk.add_charge(page, meter="llm_tokens", model="graduated")
    walk.fill_tiers(page, graduated, [("1000", "0.01"), (None, "0.005")])
    assert "No problems found." in walk.problems_shown(page)
    walk.fill_tiers(page, graduated, [("1000", "0.01"), ("2000", "0.008"), (None, "0.005")])  # "Add tier" stays valid
    assert "No problems found." in walk.problems_shown(page)
    walk.add_charge(page, meter="api_calls", model="package")
    walk.fill_fields(page, {"Units in a package": "100", "Price of a package": "2"})
    assert "No problems found." in walk.problems_shown(page)

    walk.save_draft(page)
    draft_pk = RateCardDraft.objects.get().pk
    walk.leave_and_resume(page, base, "team")
    assert page.input_value("#charges-1-package_size") == "100"
    assert page.locator("#tiers-0 tr.tier").count() == 3

    changes = walk.show_diff(page)
    assert changes == {"Base fee": "added", "Spend cap": "added", "Charge on llm_tokens": "added",
                       "Charge on api_calls": "added"}

    acme = customer_create(external_id="acme-co", name="Acme")
    now = datetime.now(timezone.utc)
    subscription_set(customer=acme, plan=RateCardDraft.objects.get().plan, start=now, now=now, actor="t")
    events_ingest(principal=Principal(scopes=frozenset({"admin"})), raw_events=[json.dumps({
        "event_id": "c1", "customer": "acme-co", "meter": "api_calls", "quantity": "250",
        "timestamp": now.isoformat()}).encode()])
    simulation = walk.simulate(page)
    page.screenshot(path=str(shots / "console-editor.png"), full_page=True)
    assert "acme-co" in simulation and "API calls (package)" in simulation and "6.00" in simulation

    walk.publish(page, base, "team", effective_from=now.strftime("%Y-%m-%dT%H:%M"))
    version = RateCardVersion.objects.get(plan__key="team")
    assert [c["model"] for c in version.definition["charges"]] == ["graduated", "package"]
    assert not RateCardDraft.objects.exists()

    rows = walk.audit_rows(page, base)
    by_ops = {(action, target) for who, action, target in rows if who == "user ops"}
    tokens = Meter.objects.get(key="llm_tokens")
    for step in (("meter.created", f"meter:{tokens.pk}"), ("plan.created", f"plan:{version.plan_id}"),
                 ("ratecard_draft.saved", f"rate_card_draft:{draft_pk}"),
                 ("ratecard.published", f"rate_card_version:{version.pk}"),
                 ("ratecard_draft.published", f"rate_card_draft:{draft_pk}")):
        assert step in by_ops, (step, rows)
