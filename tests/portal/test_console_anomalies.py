"""The console's anomaly review queue: open anomalies listed, one anomaly's review (figures, chart, the top runs,
models and projects of the burst), and resolving it: resume lifts the pause, keep paused keeps it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from billing.customers.services import customer_user_create, project_create
from billing.guardrails.models import Anomaly
from tests.billing.guardrails.anomaly_sim import Sim, steady, watch
from tests.billing.guardrails.test_anomalies import BASE, T0

pytestmark = [pytest.mark.django_db, pytest.mark.ledger]


@pytest.fixture
def staff(client):
    client.force_login(get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True))
    return client


@pytest.fixture
def anomaly(acme) -> Anomaly:
    """An hour of ordinary traffic, then a runaway run of one project on one model."""
    project_create(customer=acme, key="agents")
    watch(acme, window_minutes=5, factor="5", min_spend="1", action="pause")
    sim = Sim()
    sim.run(T0, T0 + timedelta(hours=1), steady(BASE), every=60, dimensions={"model": "small-model"},
            trace={"run_id": "ordinary"})
    start = T0 + timedelta(hours=1)
    sim.run(start, start + timedelta(seconds=45), steady(str(Decimal(BASE) * 100)), project="agents",
            dimensions={"model": "gpt-4o"}, trace={"run_id": "runaway-7"})
    assert len(sim.opened) == 1
    return Anomaly.objects.get()


def test_the_queue_lists_open_anomalies_for_staff_only(client, staff, anomaly, acme):
    page = staff.get("/console/anomalies/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'id="anomaly-{anomaly.public_id}"' in html and "acme-co" in html and "paused" in html
    assert f"/console/anomalies/{anomaly.public_id}/" in html

    staff.logout()
    assert client.get("/console/anomalies/").status_code == 302  # to the login page
    customer_user_create(customer=acme, username="acme-user", password="pw-123456")
    client.login(username="acme-user", password="pw-123456")
    assert client.get("/console/anomalies/").status_code == 403
    assert client.get(f"/console/anomalies/{anomaly.public_id}/").status_code == 403
    assert client.post(f"/console/anomalies/{anomaly.public_id}/resolve", {"resolution": "resume"}).status_code == 403
    anomaly.refresh_from_db()
    assert anomaly.status == "open"


def test_the_review_shows_what_spiked_the_chart_and_the_top_runs_models_and_projects(staff, anomaly):
    page = staff.get(f"/console/anomalies/{anomaly.public_id}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "What spiked" in html and f"{anomaly.window_spend:.4f}" in html
    assert '<figure class="anomaly-chart"' in html and 'class="baseline"' in html and "in-window" in html
    burst = html[html.index('id="burst"'):]
    runs = burst[burst.index('class="top-runs"'):burst.index('class="top-models"')]
    models = burst[burst.index('class="top-models"'):burst.index('class="top-projects"')]
    projects = burst[burst.index('class="top-projects"'):]
    assert runs.index("runaway-7") < runs.index("ordinary")  # the runaway run costs most
    assert models.index("gpt-4o") < models.index("small-model")
    assert "<code>agents</code>" in projects
    assert staff.get("/console/anomalies/anom_unknown/").status_code == 404


def test_resume_lifts_the_pause_and_records_who_and_why(staff, anomaly):
    response = staff.post(f"/console/anomalies/{anomaly.public_id}/resolve",
                          {"resolution": "resume", "note": "planned backfill"})
    assert response.status_code == 302 and response["Location"] == "/console/anomalies/"
    anomaly.refresh_from_db()
    assert (anomaly.status, anomaly.resolution, anomaly.note, anomaly.resolved_by) == (
        "resolved", "resume", "planned backfill", "ops")
    assert anomaly.pause is not None and anomaly.pause.lifted_at is not None and anomaly.pause.lifted_by == "ops"
    queue = staff.get("/console/anomalies/").content.decode()
    assert "Nothing to review." in queue and "planned backfill" in queue
    from billing.audit.models import AuditEntry

    assert list(AuditEntry.objects.filter(object_type="anomaly", object_id=str(anomaly.pk)).order_by("pk").values_list(
        "action", "actor_type", "actor_label")) == [("anomaly.opened", "system", "system:anomaly-detection"),
                                                    ("anomaly.resolved", "user", "ops")]
    resolved = AuditEntry.objects.get(action="anomaly.resolved")
    assert ((resolved.before or {})["status"], (resolved.after or {})["status"]) == ("open", "resolved")


def test_keep_paused_keeps_the_pause(staff, anomaly):
    staff.post(f"/console/anomalies/{anomaly.public_id}/resolve", {"resolution": "keep_paused", "note": "runaway"})
    anomaly.refresh_from_db()
    assert anomaly.resolution == "keep_paused" and anomaly.pause is not None and anomaly.pause.lifted_at is None
    bad = staff.post(f"/console/anomalies/{anomaly.public_id}/resolve", {"resolution": "resume"}, follow=True)
    assert "resolved already" in bad.content.decode()
    anomaly.refresh_from_db()
    assert anomaly.resolution == "keep_paused" and anomaly.pause.lifted_at is None


def test_lifting_an_anomalys_pause_on_the_guardrails_page_resolves_it(staff, anomaly):
    """The customer's guardrails page and the review queue agree: lifting there is the review's resume."""
    response = staff.post(f"/console/customers/acme-co/guardrails/pauses/{anomaly.pause.pause_id}/lift")
    assert response.status_code in (200, 302)
    anomaly.refresh_from_db()
    assert (anomaly.status, anomaly.resolution, anomaly.resolved_by) == ("resolved", "resume", "ops")
    assert anomaly.pause.lifted_at is not None
