"""The rate-card editor: charges and limits added and removed, every model's fields in words, "Add tier"
keeping the draft valid, problems beside their fields and summarised once, drafts kept on the server
(resume, discard, publish), the diff against the version in effect and the line-level simulation."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from billing.audit.models import AuditEntry
from billing.catalog.models import Plan, RateCardDraft, RateCardVersion
from billing.catalog.services import catalog_import, meter_create, subscription_set
from billing.common.auth import Principal
from billing.usage.services import events_ingest
from tests.portal.test_console import CATALOG, FORM

pytestmark = [pytest.mark.django_db, pytest.mark.ledger]
EDITOR = "/console/plans/pro/versions/new"
PACKAGE = {"charges-1-meter": "llm_tokens", "charges-1-model": "package", "charges-1-package_size": "1000",
           "charges-1-package_price": "2"}


@pytest.fixture
def catalog():
    catalog_import(text=CATALOG, actor="t")


@pytest.fixture
def staff(client):
    client.force_login(get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True))
    return client


def _change(client, data, action=""):
    return client.post(f"{EDITOR}/tiers", {**data, "tier_action": action}, HTTP_HX_REQUEST="true").content.decode()


def _labels(page: str) -> list[str]:
    return [re.sub(r"\s+", " ", text).strip() for text in re.findall(r"<label[^>]*>([^<]*)</label>", page)]


def _audited(action: str) -> AuditEntry:
    entry = AuditEntry.objects.filter(action=action).latest("id")
    assert (entry.actor_type, entry.actor_label) == ("user", "ops")
    return entry


def test_add_tier_inserts_a_valid_bounded_tier_and_the_status_says_so(staff, catalog):
    page = _change(staff, FORM, "add:0")

    assert page.count('class="tier"') == 3
    assert 'value="2000"' in page and "No problems found." in page


def test_the_status_box_reflects_the_real_validation_after_a_change(staff, catalog):
    page = _change(staff, {**FORM, "charges-0-tiers-1-up_to": "500"})

    assert "No problems found." not in page
    assert "2 problems" in page or "1 problem" in page


def test_charges_and_limits_are_added_and_removed(staff, catalog):
    added = _change(staff, FORM, "add-charge")
    limit_added = _change(staff, FORM, "add-limit")
    removed = _change(staff, FORM, "remove-charge:0")
    limit_removed = _change(staff, FORM, "remove-limit:0")

    assert added.count('class="charge"') == 2 and 'name="charges-1-unit_price"' in added
    assert limit_added.count('class="limit"') == 2
    assert removed.count('class="charge"') == 0 and "No problems found." in removed
    assert limit_removed.count('class="limit"') == 0


@pytest.mark.parametrize(("model", "labels"), [
    ("per_unit", ["Price per unit"]),
    ("graduated", []),
    ("volume", []),
    ("package", ["Units in a package", "Price of a package", "Free units before the first package"]),
    ("flat_overage", ["Flat fee for the period", "Units included in the flat fee", "Price per unit beyond those included"]),
])
def test_every_model_shows_its_fields_labelled_in_words(staff, catalog, model, labels):
    page = _change(staff, {**FORM, "charges-0-model": model})

    shown = _labels(page)
    for label in labels:
        assert label in shown
    if model in ("graduated", "volume"):
        assert 'class="tier"' in page and "Flat fee on reaching the tier" in page
    assert not [label for label in shown if "_" in label]  # no raw keys such as unit_price


def test_a_problem_is_beside_its_highlighted_field_and_summarised_once(staff, catalog):
    page = _change(staff, {**FORM, "charges-0-tiers-0-unit_price": "-1"})

    assert re.search(r'id="charges-0-tiers-0-unit_price"[^>]*class="invalid" aria-invalid="true"', page)
    assert page.count("must not be negative") == 1
    assert '<a href="#charges-0-tiers-0-unit_price">Charge 1 (llm_tokens), tier 1, Price per unit</a>' in page


def test_every_amount_that_is_not_a_number_is_reported_at_once(staff, catalog):
    page = _change(staff, {**FORM, "base_fee": "ten", "charges-0-tiers-1-unit_price": "abc"})

    assert page.count("enter a number") == 2 and "2 problems" in page


def test_a_draft_is_saved_resumed_and_discarded_on_the_server(staff, catalog):
    saved = staff.post("/console/plans/pro/draft/save", {**FORM, "base_fee": "15"}, HTTP_HX_REQUEST="true")

    assert saved.status_code == 200 and "Draft saved at" in saved.content.decode()
    draft = RateCardDraft.objects.get(plan__key="pro")
    assert draft.document["base_fee"] == "15" and draft.effective_from == "2030-01-01T00:00"
    _audited("ratecard_draft.saved")
    resumed = staff.get(EDITOR).content.decode()
    assert "Resumed the draft" in resumed and 'id="base_fee" name="base_fee" value="15"' in resumed
    assert "Resume the draft" in staff.get("/console/plans/pro/").content.decode()
    # saving it again unchanged writes nothing more
    staff.post("/console/plans/pro/draft/save", {**FORM, "base_fee": "15"}, HTTP_HX_REQUEST="true")
    assert AuditEntry.objects.filter(action="ratecard_draft.saved").count() == 1

    assert staff.post("/console/plans/pro/draft/discard").status_code == 302
    assert not RateCardDraft.objects.exists()
    _audited("ratecard_draft.discarded")
    assert 'id="base_fee" name="base_fee" value="10"' in staff.get(EDITOR).content.decode()


def test_an_invalid_draft_may_be_saved_and_comes_back_with_its_problems(staff, catalog):
    staff.post("/console/plans/pro/draft/save", {**FORM, "charges-0-tiers-0-up_to": "0"}, HTTP_HX_REQUEST="true")

    page = staff.get(EDITOR).content.decode()

    assert "Resumed the draft" in page and 'data-path="charges[0].tiers[0].up_to"' in page


def test_publishing_the_draft_makes_a_version_and_drops_the_draft(staff, catalog):
    staff.post("/console/plans/pro/draft/save", {**FORM, **PACKAGE}, HTTP_HX_REQUEST="true")

    response = staff.post(EDITOR, {**FORM, **PACKAGE})

    assert response.status_code == 302
    version = RateCardVersion.objects.get(plan__key="pro", number=2)
    assert [c["model"] for c in version.definition["charges"]] == ["graduated", "package"]
    assert not RateCardDraft.objects.exists()
    assert _audited("ratecard.published").object_id == str(version.pk)
    _audited("ratecard_draft.published")


def test_a_refused_publish_keeps_the_draft_and_shows_the_problem_beside_its_field(staff, catalog):
    staff.post("/console/plans/pro/draft/save", FORM, HTTP_HX_REQUEST="true")

    response = staff.post(EDITOR, {**FORM, "effective_from": "not a date"})

    page = response.content.decode()
    assert response.status_code == 422 and 'id="effective_from"' in page and page.count("a date and time (UTC)") == 1
    assert RateCardDraft.objects.exists() and RateCardVersion.objects.count() == 1


def test_the_diff_shows_changed_tiers_an_added_charge_and_a_removed_limit(staff, catalog):
    data = {**FORM, **PACKAGE, "charges-0-tiers-1-unit_price": "0.004"}
    del data["limits-0-meter"], data["limits-0-soft"], data["limits-0-hard"]

    page = staff.post(f"{EDITOR}/diff", data, HTTP_HX_REQUEST="true").content.decode()

    assert "Draft against version 1 (in effect)" in page
    changes = {what: change for change, what in re.findall(r'<tr data-change="(\w+)" data-what="([^"]+)"', page)}
    assert changes == {
        "Base fee": "same", "Spend cap": "same", "Charge on llm_tokens": "changed", "Charge on llm_tokens (#2)": "added",
        "Limit on llm_tokens": "removed"}
    assert "<del>Tier 2: above 1000 units at 0.005 each</del>" in page
    assert "<ins>Tier 2: above 1000 units at 0.004 each</ins>" in page
    assert "<ins>2 per package of 1000 units</ins>" in page


def test_a_published_version_is_compared_with_the_one_in_effect(staff, catalog):
    catalog_import(text=CATALOG.replace("2026-01-01", "2099-01-01").replace('"10"', '"12"'), actor="t")

    page = staff.get("/console/plans/pro/versions/2/diff").content.decode()

    assert "Version 2 against version 1 (in effect)" in page
    assert '<tr data-change="changed" data-what="Base fee">' in page and "<ins>12</ins>" in page
    assert staff.get("/console/plans/pro/versions/9/diff").status_code == 404


def test_the_simulation_compares_each_line_per_customer(staff, catalog, acme):
    now = datetime.now(timezone.utc)
    meter_create(key="api_calls", name="API calls", aggregation="sum", unit="call")
    subscription_set(customer=acme, plan=Plan.objects.get(key="pro"), start=now - timedelta(days=40), now=now, actor="t")
    events_ingest(principal=Principal(scopes=frozenset({"admin"})), raw_events=[json.dumps({
        "event_id": f"e-{meter}", "customer": "acme-co", "meter": meter, "quantity": "2500",
        "timestamp": (now - timedelta(seconds=5)).isoformat()}).encode() for meter in ("llm_tokens", "api_calls")])

    page = staff.post(f"{EDITOR}/simulate", {**FORM, **PACKAGE, "charges-1-meter": "api_calls",
                                             "charges-0-tiers-1-unit_price": "0.004"}, HTTP_HX_REQUEST="true")

    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr><td>.*?</tr>", page.content.decode(), re.S)]
    by_line = {cells[0]: cells[1:] for cells in rows}
    # quantity and amount now, quantity and amount under the draft, difference
    assert by_line["Pro base fee"] == ["1", "10.00", "1", "10.00", "0.00"]
    # 1000 x 0.01 + 1500 x 0.005 = 17.50 now; 1000 x 0.01 + 1500 x 0.004 = 16.00 with the draft
    assert by_line["LLM tokens (graduated)"] == ["2500", "17.50", "2500", "16.00", "-1.50"]
    # a new charge: 3 started packages of 1000 calls at 2
    assert by_line["API calls (package)"] == ["-", "-", "2500", "6.00", "6.00"]
    assert 'data-customer="acme-co"' in page.content.decode() and "Total difference: 4.50 USD" in page.content.decode()
    other = staff.post(f"{EDITOR}/simulate", {**FORM, "simulate_customer": "globex"}, HTTP_HX_REQUEST="true")
    assert "acme-co" not in other.content.decode() and "No customer is on this plan now." in other.content.decode()
    one = staff.post(f"{EDITOR}/simulate", {**FORM, "simulate_customer": "acme-co"}, HTTP_HX_REQUEST="true")
    assert "Current period: Acme, line by line" in one.content.decode()
    assert '<option value="acme-co">Acme (acme-co)</option>' in staff.get(EDITOR).content.decode()


def test_simulating_an_invalid_draft_shows_the_errors_once(staff, catalog):
    response = staff.post(f"{EDITOR}/simulate", {**FORM, "charges-0-tiers-0-unit_price": "-1"}, HTTP_HX_REQUEST="true")

    page = response.content.decode()
    assert "fix it to simulate" in page and 'hx-swap-oob="true"' in page
    assert page.count("must not be negative") == 1


def test_a_draft_holding_a_nul_is_refused_not_stored(staff, catalog):
    response = staff.post("/console/plans/pro/draft/save", {**FORM, "charges-0-name": "To\u0000kens"},
                          HTTP_HX_REQUEST="true")

    assert response.status_code == 200 and "NUL" in response.content.decode()
    assert not RateCardDraft.objects.exists()


def test_a_changed_field_is_checked_without_replacing_the_inputs(staff, catalog):
    page = staff.post(f"{EDITOR}/validate", {**FORM, "charges-0-tiers-0-up_to": "0"}, HTTP_HX_REQUEST="true").content.decode()

    assert "<input" not in page  # what is typed meanwhile stays
    assert '<span class="error" id="charges-0-tiers-0-up_to-error" hx-swap-oob="true">must be greater than 0' in page
    assert '<span class="error" id="base_fee-error" hx-swap-oob="true"></span>' in page  # cleared once fixed
    assert page.count("must be greater than 0") == 1 and '<a href="#charges-0-tiers-0-up_to">' in page


def test_run_limits_and_anomaly_settings_are_kept_and_edited(staff, catalog):
    guards = "    run_limits: {max_steps: 50}\n    anomaly: {window_minutes: 15, factor: '3', min_spend: '5'}\n"
    catalog_import(text=CATALOG.replace("2026-01-01", "2026-02-01").replace("    limits:", guards + "    limits:"), actor="t")
    page = staff.get(EDITOR).content.decode()
    assert 'id="run_limits-max_steps" name="run_limits-max_steps" value="50"' in page
    assert 'id="anomaly-window_minutes" name="anomaly-window_minutes" value="15"' in page

    bad = _change(staff, {**FORM, "run_limits-max_steps": "many"})
    low = _change(staff, {**FORM, "run_limits-max_steps": "40", "anomaly-window_minutes": "15", "anomaly-factor": "1",
                          "anomaly-min_spend": "5"})
    response = staff.post(EDITOR, {**FORM, "run_limits-max_steps": "40", "anomaly-window_minutes": "15",
                                   "anomaly-factor": "3", "anomaly-min_spend": "5", "anomaly-action": "pause"})

    assert '<span class="error" id="run_limits-max_steps-error">enter a whole number</span>' in bad
    assert '<span class="error" id="anomaly-factor-error">must be greater than 1</span>' in low
    assert response.status_code == 302
    version = RateCardVersion.objects.get(plan__key="pro", number=3)
    assert version.definition["run_limits"]["max_steps"] == 40
    assert version.definition["anomaly"] == {"window_minutes": 15, "factor": "3", "min_spend": "5", "action": "pause"}


def test_a_charges_markup_is_kept_by_a_version_published_from_the_console(staff, catalog):
    markup = "        markup: {dimension: provider, percent: {openai: '20'}}\n"
    catalog_import(text=CATALOG.replace("2026-01-01", "2026-02-01").replace("        tiers:\n", markup + "        tiers:\n", 1),
                   actor="t")
    page = staff.get(EDITOR).content.decode()
    assert "Markup: openai +20% (by provider; others +0%)" in page
    hidden = re.search(r'name="charges-0-markup" value="([^"]+)"', page)
    assert hidden is not None

    response = staff.post(EDITOR, {**FORM, "charges-0-markup": hidden.group(1).replace("&quot;", '"')})

    assert response.status_code == 302
    version = RateCardVersion.objects.get(plan__key="pro", number=3)
    assert version.definition["charges"][0]["markup"] == {"dimension": "provider", "percent": {"openai": "20"},
                                                          "default": "0"}


def test_a_field_that_is_not_a_number_does_not_hide_the_other_problems(staff, catalog):
    page = _change(staff, {**FORM, "base_fee": "abc", "charges-0-tiers-0-up_to": "0"})

    assert '<span class="error" id="base_fee-error">enter a number, such as 0.01</span>' in page
    assert '<span class="error" id="charges-0-tiers-0-up_to-error">must be greater than 0' in page
    assert "2 problems" in page


def test_a_plan_tax_rate_is_set_in_the_editor_checked_and_shown_in_the_diff(staff, catalog):
    refused = staff.post(EDITOR, {**FORM, "tax_rate": "120"})
    assert refused.status_code == 422 and "a percent from 0 to 100" in refused.content.decode()

    response = staff.post(EDITOR, {**FORM, "tax_rate": "7.5"})

    assert response.status_code == 302
    version = RateCardVersion.objects.get(plan__key="pro", number=2)
    assert version.definition["tax_rate"] == "7.5" and version.rate_card.tax_rate == Decimal("7.5")
    diff = staff.get("/console/plans/pro/versions/2/diff").content.decode()
    assert 'data-what="Tax rate (%)"' in diff and "<ins>7.5</ins>" in diff
