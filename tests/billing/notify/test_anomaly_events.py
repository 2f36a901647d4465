"""``anomaly.opened`` and ``anomaly.resolved``: emitted when the sampler opens an anomaly and when an operator
resolves it, delivered signed to a real receiver, once per anomaly, also when the first attempt fails. And the
emails of an opened anomaly: the operator's staff and the customer's contacts, once."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pytest

from billing.guardrails.models import Anomaly
from billing.notify import signing
from billing.notify.services import delivery_attempt
from tests.billing.guardrails.anomaly_sim import Sim, steady, watch
from tests.billing.guardrails.test_anomalies import BASE, T0
from tests.billing.notify.conftest import Answer, Receiver
from tests.conftest import post_json


def _open_anomaly(customer) -> Sim:
    watch(customer, window_minutes=5, factor="5", min_spend="1", action="pause")
    sim = Sim(customer.external_id)
    sim.run(T0, T0 + timedelta(hours=1), steady(BASE), every=60)
    start = T0 + timedelta(hours=1)
    sim.run(start, start + timedelta(minutes=1), steady(str(Decimal(BASE) * 100)))
    sim.run(start + timedelta(minutes=1), start + timedelta(minutes=4), steady(BASE))  # ticks while it is open
    return sim


@pytest.mark.ledger
@pytest.mark.django_db
def test_anomaly_opened_and_resolved_are_delivered_signed_once_each(admin, receiver: Receiver, acme, celery_eager,
                                                                   django_capture_on_commit_callbacks, settings):
    settings.TOLLGATE_OPERATOR_EMAILS = ["ops@operator.example"]
    acme.email = "billing@acme.example"
    acme.save(update_fields=["email"])
    endpoint = post_json(admin, "/api/v1/webhook-endpoints",
                         {"url": receiver.url, "events": ["anomaly.opened", "anomaly.resolved"]}).json()
    receiver.script = [Answer(status=503)]  # the first delivery fails; the retry gets through

    with django_capture_on_commit_callbacks(execute=True):
        sim = _open_anomaly(acme)
    assert len(sim.opened) == 1
    anomaly = Anomaly.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        resolved = post_json(admin, f"/api/v1/anomalies/{anomaly.public_id}/resolve", {"resolution": "resume"})
        assert resolved.status_code == 200
        post_json(admin, f"/api/v1/anomalies/{anomaly.public_id}/resolve", {"resolution": "resume"})  # a retry
    from billing.notify.models import WebhookDelivery

    for delivery in WebhookDelivery.objects.filter(state="pending"):  # the retry, once its backoff is over
        assert delivery.next_attempt_at is not None
        delivery_attempt(delivery_pk=delivery.pk, now=delivery.next_attempt_at + timedelta(seconds=1))

    by_type = Counter(r.json["type"] for r in receiver.requests)
    assert by_type == {"anomaly.opened": 2, "anomaly.resolved": 1}  # opened: the failed attempt and its retry
    assert sum(receiver.processed.values()) == 2 and set(receiver.processed.values()) == {1}
    opened = next(r for r in receiver.requests if r.json["type"] == "anomaly.opened")
    assert {r.json["id"] for r in receiver.requests if r.json["type"] == "anomaly.opened"} == {opened.json["id"]}
    data = opened.json["data"]["anomaly"]
    assert (data["id"], data["customer"], data["status"], data["action"]) == (anomaly.public_id, "acme-co", "open",
                                                                               "pause")
    assert data["pause"]["active"] is True
    done = next(r for r in receiver.requests if r.json["type"] == "anomaly.resolved").json["data"]["anomaly"]
    assert (done["status"], done["resolution"], done["pause"]["active"]) == ("resolved", "resume", False)
    for request in receiver.requests:
        assert signing.verify(secret=endpoint["secret"], header=request.headers["Tollgate-Signature"],
                              body=request.body, now=int(time.time()))


@pytest.mark.ledger
@pytest.mark.django_db
def test_an_opened_anomaly_emails_the_operator_and_the_customer_once(acme, celery_eager, mailoutbox,
                                                                     django_capture_on_commit_callbacks, settings):
    settings.TOLLGATE_OPERATOR_EMAILS = ["ops@operator.example"]
    acme.email = "billing@acme.example"
    acme.save(update_fields=["email"])
    with django_capture_on_commit_callbacks(execute=True):
        _open_anomaly(acme)
    anomaly = Anomaly.objects.get()
    assert sorted(tuple(m.to) for m in mailoutbox) == [("billing@acme.example",), ("ops@operator.example",)]
    operator = next(m for m in mailoutbox if m.to == ["ops@operator.example"])
    assert "acme-co" in operator.subject and "paused" in operator.subject
    assert f"/console/anomalies/{anomaly.public_id}/" in operator.body
    customer = next(m for m in mailoutbox if m.to == ["billing@acme.example"])
    assert "paused" in customer.body and "/console/" not in customer.body

    from billing.guardrails.anomalies.emails import anomaly_emails_send

    assert anomaly_emails_send(anomaly_pk=anomaly.pk) == 0  # at most once
    assert len(mailoutbox) == 2
