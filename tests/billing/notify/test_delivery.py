"""Deliveries to a real HTTP receiver: signed with the endpoint's secret, retried with backoff on a
failure or a timeout with the same event id, for at least 24 hours, picked up by the beat's sweep when a
task is lost, never following a redirect, re-sendable; stored once per event and endpoint."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing.notify import services, tasks
from billing.notify.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from tests.billing.notify.conftest import Answer, Receiver
from tests.conftest import post_json

URL = "/api/v1/webhook-endpoints"


def endpoint_for(admin: Any, receiver: Receiver, events: list[str] | None = None) -> dict[str, Any]:
    response = post_json(admin, URL, {"url": receiver.url, "events": events or ["invoice.paid"]})
    assert response.status_code == 201, response.content
    return response.json()


def emit(capture: Any, key: str = "invoice.paid:7", type_: str = "invoice.paid") -> WebhookEvent:
    """Emit after commit, as the receivers do: the delivery task runs inline (eager Celery)."""
    with capture(execute=True):
        event = services.event_emit(type=type_, key=key, data={"invoice": {"id": 7, "total": "12.50"}})
    assert event is not None
    return event


def let_the_backoff_pass() -> None:
    """The clock moves past every pending delivery's next attempt."""
    WebhookDelivery.objects.filter(state="pending").update(next_attempt_at=timezone.now() - timedelta(seconds=1))


def verify(secret: str, header: str, body: bytes) -> bool:
    """The receiver's side, written from the documented format, not from billing.notify.signing."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


@pytest.mark.django_db
def test_a_delivery_is_a_signed_post_of_id_type_created_and_data(admin, receiver, celery_eager,
                                                                  django_capture_on_commit_callbacks):
    endpoint = endpoint_for(admin, receiver)
    event = emit(django_capture_on_commit_callbacks)

    [request] = receiver.requests
    assert request.path == "/hooks/tollgate"
    assert request.headers["Content-Type"] == "application/json"
    assert request.json == {"id": event.public_id, "type": "invoice.paid",
                            "created": event.created.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
                            "data": {"invoice": {"id": 7, "total": "12.50"}}}
    header = request.headers["Tollgate-Signature"]
    assert verify(endpoint["secret"], header, request.body)
    assert abs(int(dict(p.split("=", 1) for p in header.split(","))["t"]) - time.time()) < 60
    assert not verify("whsec_another", header, request.body)
    assert not verify(endpoint["secret"], header, request.body.replace(b"12.50", b"99.50"))  # tampered body
    delivery = WebhookDelivery.objects.get()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 200)
    assert receiver.processed == {event.public_id: 1}


@pytest.mark.django_db
def test_a_failing_receiver_that_recovers_gets_the_event_once_with_the_same_id_on_every_retry(
        admin, receiver, celery_eager, django_capture_on_commit_callbacks):
    endpoint_for(admin, receiver)
    receiver.script = [Answer(500), Answer(503)]
    event = emit(django_capture_on_commit_callbacks)

    delivery = WebhookDelivery.objects.get()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("pending", 1, 500)
    assert delivery.next_attempt_at is not None and delivery.next_attempt_at > timezone.now()
    assert tasks.webhooks_sweep_task() == 0  # not due yet: nothing is sent early
    assert len(receiver.requests) == 1

    for _ in range(3):  # the beat's sweep, each time the backoff has passed
        let_the_backoff_pass()
        tasks.webhooks_sweep_task()

    assert [r.json["id"] for r in receiver.requests] == [event.public_id] * 3
    assert len({r.body for r in receiver.requests}) == 1  # the same bytes each time
    assert receiver.processed == {event.public_id: 1}
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.last_status, delivery.last_error) == ("delivered", 3, 200, "")
    assert delivery.delivered_at is not None


@pytest.mark.django_db
def test_retries_back_off_exponentially_with_jitter_for_at_least_a_day_then_stop(admin, receiver):
    endpoint_for(admin, receiver)
    receiver.script = [Answer(500)] * 100
    event = services.event_emit(type="invoice.paid", key="invoice.paid:1", data={})
    assert event is not None
    delivery = WebhookDelivery.objects.get()
    at = timezone.now()
    times = []
    while delivery.state == "pending":
        attempted = services.delivery_attempt(delivery_pk=delivery.pk, now=at)
        assert attempted is not None
        delivery = attempted
        times.append(at)
        if delivery.next_attempt_at:
            at = delivery.next_attempt_at + timedelta(seconds=1)

    waits = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert delivery.state == "failed" and delivery.attempts == len(times) == len(receiver.requests)
    assert 24 * 3600 <= (times[-1] - times[0]).total_seconds() <= 72 * 3600
    assert 24 <= waits[0] <= 37 and 6 * 3600 * 0.8 <= max(waits) <= 6 * 3600 * 1.2 + 1
    assert all(b > a for a, b in itertools.pairwise(waits[:9]))  # growing until the cap
    assert {r.json["id"] for r in receiver.requests} == {event.public_id}
    assert receiver.processed == {}


@pytest.mark.django_db
def test_a_timeout_counts_as_a_failure_and_is_retried(admin, receiver, settings, celery_eager,
                                                      django_capture_on_commit_callbacks):
    settings.TOLLGATE_WEBHOOK_TIMEOUT_SECONDS = 0.3
    endpoint_for(admin, receiver)
    receiver.script = [Answer(200, delay=1.0)]
    event = emit(django_capture_on_commit_callbacks)

    delivery = WebhookDelivery.objects.get()
    assert delivery.state == "pending" and delivery.last_status is None and "timeout" in delivery.last_error
    let_the_backoff_pass()
    tasks.webhooks_sweep_task()
    delivery.refresh_from_db()
    assert delivery.state == "delivered" and delivery.attempts == 2
    assert [r.json["id"] for r in receiver.requests] == [event.public_id] * 2
    time.sleep(0.8)  # the slow first answer reaches the receiver's dedup too
    assert receiver.processed == {event.public_id: 1}


@pytest.mark.django_db
def test_a_redirect_is_not_followed(admin, receiver, celery_eager, django_capture_on_commit_callbacks):
    endpoint_for(admin, receiver)
    receiver.script = [Answer(307, headers={"Location": "http://127.0.0.2:9/steal"})]
    emit(django_capture_on_commit_callbacks)

    delivery = WebhookDelivery.objects.get()
    assert len(receiver.requests) == 1
    assert delivery.state == "pending" and delivery.last_status == 307
    assert "redirect to http://127.0.0.2:9/steal not followed" in delivery.last_error


@pytest.mark.django_db
def test_a_task_lost_with_the_broker_is_queued_again_by_the_sweep(admin, receiver, celery_eager, monkeypatch,
                                                                   django_capture_on_commit_callbacks):
    endpoint_for(admin, receiver)

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    with monkeypatch.context() as patched:
        patched.setattr(tasks.webhook_deliver_task, "delay", broker_down)
        event = emit(django_capture_on_commit_callbacks)
    assert receiver.requests == []
    assert tasks.webhooks_sweep_task() == 0  # just queued: not queued again at once

    WebhookDelivery.objects.update(queued_at=timezone.now() - services.REQUEUE_AFTER - timedelta(seconds=1))
    assert tasks.webhooks_sweep_task() == 1
    assert receiver.processed == {event.public_id: 1}
    assert WebhookDelivery.objects.get().state == "delivered"


@pytest.mark.django_db
def test_a_leased_delivery_is_not_sent_by_a_second_worker(admin, receiver):
    endpoint_for(admin, receiver)
    services.event_emit(type="invoice.paid", key="invoice.paid:1", data={})
    delivery = WebhookDelivery.objects.get()
    WebhookDelivery.objects.update(leased_until=timezone.now() + timedelta(seconds=30))  # another worker sends it

    assert services.delivery_attempt(delivery_pk=delivery.pk) is not None
    assert services.deliveries_sweep() == 0
    assert receiver.requests == []


@pytest.mark.django_db
def test_resend_sends_the_same_event_again_and_revives_a_failed_delivery(admin, receiver, celery_eager,
                                                                         django_capture_on_commit_callbacks):
    endpoint = endpoint_for(admin, receiver)
    event = emit(django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get()
    WebhookDelivery.objects.update(state="failed")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(f"{URL}/{endpoint['id']}/deliveries/{delivery.pk}/resend")
    assert response.status_code == 202, response.content
    assert response.json()["event"]["id"] == event.public_id

    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("delivered", 2)
    assert [r.json["id"] for r in receiver.requests] == [event.public_id] * 2
    assert receiver.processed == {event.public_id: 1}  # the receiver dedups the repeat by its id
    listed = admin.get(f"{URL}/{endpoint['id']}/deliveries").json()["data"]
    assert [(d["id"], d["status"], d["attempts"], d["last_status"]) for d in listed] == [(delivery.pk, "delivered", 2, 200)]


@pytest.mark.django_db
def test_an_event_is_stored_once_per_key_and_delivered_once_per_endpoint(admin, receiver):
    endpoint_for(admin, receiver)
    endpoint_for(admin, receiver, events=["invoice.paid", "invoice.voided"])
    endpoint_for(admin, receiver, events=["invoice.voided"])
    first = services.event_emit(type="invoice.paid", key="invoice.paid:1", data={"n": 1})
    again = services.event_emit(type="invoice.paid", key="invoice.paid:1", data={"n": 2})

    assert first is not None and again is not None and first.pk == again.pk and again.data == {"n": 1}
    assert WebhookEvent.objects.count() == 1
    assert WebhookDelivery.objects.count() == 2  # the two endpoints subscribed to invoice.paid
    with pytest.raises(IntegrityError), transaction.atomic():
        WebhookEvent.objects.create(public_id="evt_x", key="invoice.paid:1", type="invoice.paid", created=first.created)
    with pytest.raises(IntegrityError), transaction.atomic():
        WebhookDelivery.objects.create(event=first, endpoint=WebhookEndpoint.objects.earliest("pk"),
                                       retry_until=first.created)


def test_the_signature_helper_matches_the_documented_format():
    from billing.notify import signing

    body = json.dumps({"id": "evt_1"}).encode()
    header = signing.header_value(secret="whsec_s", timestamp=1_780_000_000, body=body)
    assert header.startswith("t=1780000000,v1=") and verify("whsec_s", header, body)
    assert signing.verify(secret="whsec_s", header=header, body=body, now=1_780_000_100)
    assert not signing.verify(secret="whsec_s", header=header, body=body, now=1_780_001_000)  # too old
    assert not signing.verify(secret="whsec_s", header=header, body=body + b" ", now=1_780_000_100)


@pytest.mark.django_db
def test_the_admin_lists_deliveries_hides_secrets_and_resends_on_request(admin, receiver, client, celery_eager,
                                                                         django_capture_on_commit_callbacks):
    from django.contrib.auth.models import User

    endpoint = endpoint_for(admin, receiver)
    event = emit(django_capture_on_commit_callbacks)
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-123456"))
    pk = WebhookEndpoint.objects.get().pk

    pages = [client.get("/admin/notify/webhookendpoint/"), client.get(f"/admin/notify/webhookendpoint/{pk}/change/"),
             client.get("/admin/notify/webhookdelivery/"), client.get("/admin/notify/webhookevent/")]
    assert [p.status_code for p in pages] == [200] * 4
    assert all(endpoint["secret"] not in p.content.decode() for p in pages)
    assert client.get("/admin/notify/webhookendpoint/add/").status_code == 403  # created through the API only

    with django_capture_on_commit_callbacks(execute=True):
        client.post("/admin/notify/webhookdelivery/",
                    {"action": "resend", "_selected_action": list(WebhookDelivery.objects.values_list("pk", flat=True))})
    assert [r.json["id"] for r in receiver.requests] == [event.public_id] * 2
    assert WebhookDelivery.objects.get().attempts == 2


def test_the_beat_sweeps_deliveries_with_tasks_the_worker_knows():
    from portal.celery import app

    app.loader.import_default_modules()
    assert app.conf.beat_schedule["webhooks-sweep"] == {"task": "notify.sweep", "schedule": 30.0}
    assert {"notify.sweep", "notify.deliver"} <= set(app.tasks)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_workers_and_sweeps_on_postgresql_post_each_event_once(admin, receiver):
    endpoint_for(admin, receiver)
    receiver.script = [Answer(200, delay=0.3)]  # a slow receiver: the others try while the first is sending
    services.event_emit(type="invoice.paid", key="invoice.paid:1", data={})
    delivery = WebhookDelivery.objects.get()
    threads = 12
    barrier = threading.Barrier(threads)

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                if n % 2:
                    tasks.webhook_deliver_task(delivery.pk)  # redelivered tasks (acks_late)
                else:
                    services.delivery_attempt(delivery_pk=delivery.pk)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(worker, range(threads)))

    assert len(receiver.requests) == 1
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("delivered", 1)
