"""The guardrails' webhook events: customer.paused, circuit.tripped, run.killed and budget.alert, each
delivered signed and exactly once per id, also when the receiver fails the first delivery."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from billing.guardrails.alerts import alerts_check
from billing.notify.models import WebhookDelivery
from billing.notify.services import deliveries_sweep
from tests import factories
from tests.billing.notify.conftest import Answer, Receiver
from tests.billing.notify.test_delivery import verify
from tests.conftest import post_json

UTC = timezone.utc
GUARD_TYPES = ["customer.paused", "circuit.tripped", "run.killed", "budget.alert"]


def ev(event_id: str, run: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": event_id, "customer": "acme-co", "meter": "llm_tokens", "quantity": "1",
                            "timestamp": (datetime.now(UTC) - timedelta(seconds=5)).isoformat()}
    if run:
        body["trace"] = {"run_id": run}
    return body


@pytest.mark.django_db
@pytest.mark.ledger
def test_each_guard_event_is_delivered_signed_once(admin, receiver: Receiver, acme, celery_eager,
                                                  django_capture_on_commit_callbacks):
    created = post_json(admin, "/api/v1/webhook-endpoints", {"url": receiver.url, "events": GUARD_TYPES}).json()
    text = factories.catalog(factories.plan("metered", [{"meter": "llm_tokens", "model": "per_unit",
                                                          "unit_price": "0.01"}], run_limits={"max_steps": 2}))
    factories.subscribe(acme, "metered", start=datetime(2026, 1, 1, tzinfo=UTC), now=datetime.now(UTC),
                        catalog_text=text)
    receiver.script = [Answer(status=500)]  # the first delivery fails; its retry carries the same id

    with django_capture_on_commit_callbacks(execute=True):
        for n in range(4):  # the third step trips r1; the fourth is refused by its state (no second trip)
            post_json(admin, "/api/v1/events", ev(f"s{n}", run="r1"))
        post_json(admin, "/api/v1/customers/acme-co/runs/r2/kill", {})
        post_json(admin, "/api/v1/customers/acme-co/budgets", {"budget_id": "team", "amount": "0.02", "soft": "50%"})
        post_json(admin, "/api/v1/events", ev("b1"))
        alerts_check(customer_pk=acme.pk)
        alerts_check(customer_pk=acme.pk)
        post_json(admin, "/api/v1/customers/acme-co/pauses", {"scope": "customer", "reason": "review"})
    with django_capture_on_commit_callbacks(execute=True):
        WebhookDelivery.objects.update(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        deliveries_sweep()

    by_type = Counter(r.json["type"] for r in receiver.requests)
    assert set(by_type) == set(GUARD_TYPES)
    assert sum(by_type.values()) == 5  # four events, one delivered twice (the failed first try)
    assert set(receiver.processed.values()) == {1} and len(receiver.processed) == 4
    for request in receiver.requests:
        assert verify(created["secret"], request.headers["Tollgate-Signature"], request.body)
    bodies = {r.json["type"]: r.json["data"] for r in receiver.requests}
    assert bodies["circuit.tripped"]["run"]["run_id"] == "r1"
    assert bodies["circuit.tripped"]["run"]["breaker"] == "max_steps"
    assert bodies["run.killed"]["run"]["state"] == "killed"
    assert bodies["customer.paused"]["pause"]["reason"] == "review"
    assert bodies["budget.alert"]["budget"] == "team" and bodies["budget.alert"]["alert"]["percent"] == "50"
