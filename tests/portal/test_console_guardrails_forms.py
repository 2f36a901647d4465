"""The guardrails page's override and pause forms: each problem beside its input, said once, and listed
once above its form as a link to that input; a problem of no input in particular said in the list only."""

from __future__ import annotations

from datetime import datetime, timezone
from html import unescape
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from billing.audit.models import AuditEntry
from billing.guardrails.models import CustomerOverride, Pause
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.ledger]
CONSOLE = "/console/customers/acme-co/guardrails/"


@pytest.fixture
def ops(client: Any, acme: Any) -> Any:
    text = factories.catalog(factories.plan("guarded", [{"meter": "llm_tokens", "model": "per_unit",
                                                         "unit_price": "0.01"}]), meters=(factories.TOKENS,))
    factories.subscribe(acme, "guarded", start=datetime(2026, 1, 1, tzinfo=timezone.utc),
                        now=datetime.now(timezone.utc), catalog_text=text)
    acme.projects.create(key="agent")
    client.force_login(get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True))
    return client


def summary(html: str, form: str) -> str:
    start = html.index(f'data-error-summary="{form}"')
    return html[start:html.index("</div>", start)]


def test_an_override_problem_is_beside_its_input_once_and_linked_from_the_summary(ops: Any) -> None:
    response = ops.post(f"{CONSOLE}override", {"limit-llm_tokens-hard": "-5", "run_limits-max_steps": "0",
                                               "spend_cap_mode": "plan"})

    assert response.status_code == 422
    html = unescape(response.content.decode())
    listed = summary(html, "override")
    assert "2 problems to fix" in listed
    assert '<a href="#override-limit-llm_tokens-hard">Hard limit of llm_tokens</a>' in listed
    assert '<a href="#override-run_limits-max_steps">Run limits: max_steps</a>' in listed
    assert 'id="override-limit-llm_tokens-hard"' in html and 'id="override-run_limits-max_steps"' in html
    for field, message in (("limit-llm_tokens-hard", "must be greater than 0"),
                           ("run_limits-max_steps", "must be a positive whole number")):
        beside = html[html.index(f'id="override-{field}_error"'):]
        assert f'data-error-for="{field}"' in beside[:beside.index("</div>")] and message in beside[:beside.index("</div>")]
        assert html.count(message) == 1, message
        assert message not in listed
    assert not CustomerOverride.objects.exists()


def test_a_valid_override_shows_no_summary_and_is_audited_with_the_staff_user(ops: Any) -> None:
    response = ops.post(f"{CONSOLE}override", {"limit-llm_tokens-hard": "100", "spend_cap_mode": "plan"})

    assert response.status_code == 302
    assert "data-error-summary" not in ops.get(response["Location"]).content.decode()
    entry = AuditEntry.objects.filter(object_type="customer_override").order_by("-id").first()
    assert entry is not None and (entry.actor_type, entry.actor_label) == ("user", "ops")


def test_a_pause_problem_is_beside_its_input_once_and_linked_from_the_summary(ops: Any) -> None:
    response = ops.post(f"{CONSOLE}pauses", {"pause-scope": "project", "pause-project": "", "pause-reason": ""})

    assert response.status_code == 422
    html = unescape(response.content.decode())
    listed = summary(html, "pause")
    assert "One problem to fix" in listed and '<a href="#id_pause-reason">Reason</a>' in listed
    assert 'id="id_pause-reason"' in html
    beside = html[html.index('id="id_pause-reason_error"'):]
    assert 'data-error-for="pause-reason">This field is required.' in beside[:beside.index("</div>")]
    assert html.count("This field is required.") == 1
    assert not Pause.objects.exists()


def test_a_pause_refused_by_the_service_names_its_input(ops: Any) -> None:
    response = ops.post(f"{CONSOLE}pauses", {"pause-scope": "project", "pause-project": "nope", "pause-reason": "x"})

    assert response.status_code == 422
    html = unescape(response.content.decode())
    assert '<a href="#id_pause-project">Project</a>' in summary(html, "pause")
    assert 'data-error-for="pause-project">No project \'nope\' for this customer.' in html
    assert html.count("No project 'nope' for this customer.") == 1
    assert not Pause.objects.exists()


def test_a_pause_is_made_by_the_staff_user(ops: Any) -> None:
    response = ops.post(f"{CONSOLE}pauses", {"pause-scope": "project", "pause-project": "agent", "pause-reason": "loop"})

    assert response.status_code == 302
    pause = Pause.objects.get()
    assert pause.project is not None and (pause.project.key, pause.created_by) == ("agent", "ops")
    entry = AuditEntry.objects.filter(object_type="pause").order_by("-id").first()
    assert entry is not None and (entry.actor_type, entry.actor_label) == ("user", "ops")
