"""POST /webhooks/stripe: the signature is verified on the raw body, each event is stored once by its id,
processed once (a task) through the dispatch table, and any delivery order ends in the same state."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
import stripe

from billing.customers.services import customer_create
from billing.invoicing.models import Invoice
from billing.payments import webhooks
from billing.payments.models import StripeCustomer, StripeEvent, StripeInvoiceSync, SyncState
from billing.payments.services import stripe_customer_sync
from tests.billing.payments.conftest import WEBHOOK_SECRET
from tests.billing.payments.stripe_doubles import sign

URL = "/webhooks/stripe"
T0 = 1_780_000_000


def stripe_event(event_id: str, type_: str, obj: dict[str, Any], created: int = T0) -> dict[str, Any]:
    return {"id": event_id, "object": "event", "type": type_, "created": created, "api_version": "2025-03-31",
            "livemode": False, "data": {"object": obj}}


def invoice_object(row: StripeInvoiceSync, status: str, **transitions: int) -> dict[str, Any]:
    return {"id": row.stripe_invoice_id, "object": "invoice", "status": status,
            "metadata": {"tollgate_invoice_id": str(row.invoice_id)},
            "status_transitions": {"finalized_at": T0, "paid_at": None, "voided_at": None, **transitions}}


def post(client: Any, event: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> Any:
    body = json.dumps(event).encode()
    return client.post(URL, data=body, content_type="application/json",
                       HTTP_STRIPE_SIGNATURE=sign(body, secret, timestamp))


@pytest.fixture
def deliver(client: Any, webhook_secret: str, celery_eager: None,
            django_capture_on_commit_callbacks: Any) -> Callable[..., Any]:
    """Deliver signed events through the endpoint, running the after-commit task inline."""

    def send(event: dict[str, Any]) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            response = post(client, event)
        assert response.status_code == 200, response.content
        return response

    return send


@pytest.fixture
def pushed(acme: Any, make_invoice: Callable[..., Invoice]) -> Callable[..., StripeInvoiceSync]:
    """A finalized invoice already pushed to Stripe (a draft there until finalized)."""

    def make(n: int = 1) -> StripeInvoiceSync:
        invoice = make_invoice(acme, [(1000 * n, "Base fee")], month=(n - 1) % 11 + 1) if n <= 11 else None
        if invoice is None:
            customer = customer_create(external_id=f"c-{n}", name=f"C {n}")
            invoice = make_invoice(customer, [(1000 * n, "Base fee")])
        return StripeInvoiceSync.objects.create(invoice=invoice, stripe_invoice_id=f"in_test_{n}", state=SyncState.SYNCED,
                                                stripe_status="draft")

    return make


# --- signatures ------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_validly_signed_event_is_accepted_stored_and_processed(deliver, pushed):
    row = pushed()
    response = deliver(stripe_event("evt_1", "invoice.finalized", invoice_object(row, "open")))
    assert response.json() == {"received": True, "duplicate": False, "status": "received"}
    event = StripeEvent.objects.get(event_id="evt_1")
    assert (event.type, event.status, event.error, event.attempts) == ("invoice.finalized", "processed", "", 1)
    row.refresh_from_db()
    assert row.stripe_status == "open"


@pytest.mark.django_db
def test_a_tampered_body_is_rejected_with_400(client, webhook_secret):
    body = json.dumps(stripe_event("evt_t", "invoice.paid", {"id": "in_x"})).encode()
    header = sign(body, webhook_secret)
    response = client.post(URL, data=body.replace(b"in_x", b"in_y"), content_type="application/json",
                           HTTP_STRIPE_SIGNATURE=header)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert not StripeEvent.objects.exists()


@pytest.mark.django_db
def test_an_event_signed_with_another_secret_is_rejected_with_400(client, webhook_secret):
    response = post(client, stripe_event("evt_w", "invoice.paid", {"id": "in_x"}), secret="whsec_someone_else")
    assert response.status_code == 400
    assert not StripeEvent.objects.exists()


@pytest.mark.django_db
def test_a_signature_older_than_five_minutes_is_rejected_with_400(client, webhook_secret):
    old = int(time.time()) - 301
    response = post(client, stripe_event("evt_o", "invoice.paid", {"id": "in_x"}), timestamp=old)
    assert response.status_code == 400
    assert "too old" in response.json()["error"]["message"] or "tolerance" in response.json()["error"]["message"]
    recent = post(client, stripe_event("evt_r", "customer.created", {"id": "cus_x"}), timestamp=int(time.time()) - 290)
    assert recent.status_code == 200


@pytest.mark.django_db
def test_a_signature_dated_more_than_five_minutes_ahead_is_rejected_like_an_old_one(client, webhook_secret):
    # a minute's margin each way: a loaded machine may take a second or more to reach the check
    ahead = post(client, stripe_event("evt_f", "invoice.paid", {"id": "in_x"}), timestamp=int(time.time()) + 360)

    assert ahead.status_code == 400
    assert ahead.json()["error"]["code"] == "invalid_signature"
    assert "future" in ahead.json()["error"]["message"]
    assert not StripeEvent.objects.exists()
    slightly_ahead = post(client, stripe_event("evt_s", "customer.created", {"id": "cus_x"}),
                          timestamp=int(time.time()) + 240)  # a sender's clock a little fast
    assert slightly_ahead.status_code == 200


@pytest.mark.django_db
def test_a_missing_signature_or_secret_is_rejected_with_400(client, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    body = json.dumps(stripe_event("evt_n", "invoice.paid", {"id": "in_x"})).encode()
    assert client.post(URL, data=body, content_type="application/json",
                       HTTP_STRIPE_SIGNATURE=sign(body, "")).status_code == 400
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    assert client.post(URL, data=body, content_type="application/json").status_code == 400


# --- once --------------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_same_event_twice_has_one_effect(deliver, pushed):
    row = pushed()
    event = stripe_event("evt_f", "invoice.payment_failed", invoice_object(row, "open"))
    first = deliver(event)
    second = deliver(event)
    assert first.json()["duplicate"] is False
    assert second.json() == {"received": True, "duplicate": True, "status": "processed"}
    row.refresh_from_db()
    assert row.payment_failures == 1
    assert StripeEvent.objects.get().attempts == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_same_event_twice_concurrently_has_one_effect(live_server, webhook_secret, celery_eager, pushed):
    row = pushed()
    body = json.dumps(stripe_event("evt_c", "invoice.payment_failed", invoice_object(row, "open"))).encode()
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=live_server.url, timeout=30) as http:
            barrier.wait()
            statuses.append(http.post(URL, content=body, headers={"Stripe-Signature": sign(body, webhook_secret),
                                                                  "Content-Type": "application/json"}).status_code)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200, 200]
    assert StripeEvent.objects.count() == 1
    row.refresh_from_db()
    assert row.payment_failures == 1


# --- order ---------------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_paid_before_finalized_ends_paid(deliver, pushed):
    row = pushed()
    deliver(stripe_event("evt_p", "invoice.paid", invoice_object(row, "paid", paid_at=T0 + 60), created=T0 + 60))
    deliver(stripe_event("evt_f", "invoice.finalized", invoice_object(row, "open"), created=T0))
    row.refresh_from_db()
    assert row.stripe_status == "paid"
    invoice = Invoice.objects.get(pk=row.invoice_id)
    assert invoice.status == Invoice.Status.PAID
    assert invoice.paid_at is not None and int(invoice.paid_at.timestamp()) == T0 + 60


@pytest.mark.django_db
def test_voided_in_stripe_voids_the_tollgate_invoice_with_a_credit_note(deliver, pushed):
    row = pushed()
    deliver(stripe_event("evt_v", "invoice.voided", invoice_object(row, "void", voided_at=T0 + 5)))
    invoice = Invoice.objects.get(pk=row.invoice_id)
    assert invoice.status == Invoice.Status.VOID
    assert invoice.credit_notes.count() == 1


def _scenario(rows: list[StripeInvoiceSync], prefix: str) -> list[dict[str, Any]]:
    """Events Stripe could send for these invoices, in their true order (seeded, so both sets match)."""
    rng = random.Random(7)
    events = []
    for n, row in enumerate(rows):
        kind = rng.choice(["paid", "failed_then_paid", "void", "open", "failed"])
        stream = [("invoice.finalized", invoice_object(row, "open"))]
        if kind in ("failed_then_paid", "failed"):
            stream += [("invoice.payment_failed", {**invoice_object(row, "open"), "attempt_count": k}) for k in (1, 2)]
        if kind in ("paid", "failed_then_paid"):
            stream.append(("invoice.paid", invoice_object(row, "paid", paid_at=T0 + n)))
        if kind == "void":
            stream.append(("invoice.voided", invoice_object(row, "void", voided_at=T0 + n)))
        stream.append(("customer.updated", {"id": "cus_x", "object": "customer"}))  # acknowledged, not handled
        events += [stripe_event(f"evt_{prefix}_{n}_{k}", type_, obj, created=T0 + k) for k, (type_, obj) in enumerate(stream)]
    return events


def _state(rows: list[StripeInvoiceSync]) -> list[tuple[Any, ...]]:
    state = []
    for row in rows:
        row.refresh_from_db()
        invoice = Invoice.objects.get(pk=row.invoice_id)
        state.append((row.stripe_status, row.payment_failures, invoice.status, invoice.paid_at, invoice.voided_at is not None,
                      invoice.credit_notes.count()))
    return state


@pytest.mark.django_db
def test_200_events_shuffled_and_30_percent_duplicated_end_as_one_in_order_delivery(deliver, acme, make_invoice):
    def invoices(prefix: str) -> list[StripeInvoiceSync]:
        rows = []
        for n in range(60):
            customer = customer_create(external_id=f"{prefix}-{n}", name=f"{prefix} {n}")
            invoice = make_invoice(customer, [(100 + n, "Base fee")])
            rows.append(StripeInvoiceSync.objects.create(invoice=invoice, stripe_invoice_id=f"in_{prefix}_{n}",
                                                         state=SyncState.SYNCED, stripe_status="draft"))
        return rows

    in_order, shuffled = invoices("a"), invoices("b")
    events_a, events_b = _scenario(in_order, "a")[:200], _scenario(shuffled, "b")[:200]
    assert len(events_b) == 200
    # given one set delivered in order
    for event in events_a:
        deliver(event)
    # when the other is shuffled with 30% of the events delivered twice
    rng = random.Random(42)
    deliveries = events_b + rng.sample(events_b, k=int(len(events_b) * 0.3))
    rng.shuffle(deliveries)
    for event in deliveries:
        deliver(event)
    # then
    assert _state(shuffled) == _state(in_order)
    assert StripeEvent.objects.filter(event_id__startswith="evt_b").count() == len(events_b)
    assert not StripeEvent.objects.filter(status=StripeEvent.Status.FAILED).exists()


# --- dispatch --------------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_an_unhandled_type_is_acknowledged_and_marked_ignored(deliver):
    deliver(stripe_event("evt_u", "charge.refunded", {"id": "ch_1", "object": "charge"}))
    assert StripeEvent.objects.get().status == StripeEvent.Status.IGNORED


@pytest.mark.django_db
def test_an_invoice_that_is_not_ours_is_acknowledged_and_marked_ignored(deliver):
    deliver(stripe_event("evt_x", "invoice.paid", {"id": "in_elsewhere", "object": "invoice", "metadata": {}}))
    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.IGNORED
    assert "not a Tollgate invoice" in event.error


@pytest.mark.django_db
def test_a_failing_handler_records_the_error_on_the_event_and_a_retry_completes_it(deliver, pushed, monkeypatch):
    row = pushed()

    def boom(obj: Any, event: Any) -> None:
        raise RuntimeError("database hiccup")

    with monkeypatch.context() as patch:
        patch.setitem(webhooks.HANDLERS, "invoice.finalized", boom)
        deliver(stripe_event("evt_e", "invoice.finalized", invoice_object(row, "open")))
        event = StripeEvent.objects.get()
        assert (event.status, event.error, event.attempts) == ("failed", "RuntimeError: database hiccup", 1)
    assert webhooks.stripe_events_retry_failed() == 1
    event.refresh_from_db()
    assert (event.status, event.error, event.attempts) == ("processed", "", 2)
    row.refresh_from_db()
    assert row.stripe_status == "open"


@pytest.mark.django_db
def test_paid_for_a_voided_invoice_fails_visibly_instead_of_resurrecting_it(deliver, pushed):
    row = pushed()
    deliver(stripe_event("evt_v", "invoice.voided", invoice_object(row, "void", voided_at=T0)))
    deliver(stripe_event("evt_p", "invoice.paid", invoice_object(row, "paid", paid_at=T0 + 1)))
    paid = StripeEvent.objects.get(event_id="evt_p")
    assert paid.status == StripeEvent.Status.FAILED
    assert "void" in paid.error
    assert Invoice.objects.get(pk=row.invoice_id).status == Invoice.Status.VOID


# --- real delivery from localstripe ----------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_localstripe_delivers_signed_events_into_the_live_server(live_server, stripe_on, localstripe, celery_eager):
    # given localstripe sends its webhooks to our endpoint, signed with our secret
    httpx.post(f"{localstripe.url}/_config/webhooks/tollgate", data={"url": f"{live_server.url}{URL}",
                                                                      "secret": WEBHOOK_SECRET}).raise_for_status()
    customer = customer_create(external_id="webhooked", name="Webhooked")
    row = stripe_customer_sync(customer_pk=customer.pk)
    assert row.state == SyncState.SYNCED
    # when the customer is deleted in Stripe
    client = stripe.StripeClient("sk_test_tollgate", base_addresses={"api": localstripe.url})
    client.v1.customers.delete(str(row.stripe_customer_id))
    # then customer.created and customer.deleted arrive signed (about 1 s later), are stored and processed
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and StripeCustomer.objects.get(pk=row.pk).deleted_at is None:
        time.sleep(0.2)
    assert StripeCustomer.objects.get(pk=row.pk).deleted_at is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and StripeEvent.objects.filter(type="customer.created").count() == 0:
        time.sleep(0.2)
    statuses = dict(StripeEvent.objects.values_list("type", "status"))
    assert statuses == {"customer.created": "ignored", "customer.deleted": "processed"}


@pytest.mark.django_db
def test_an_event_whose_task_was_lost_is_processed_by_the_sweep(client, webhook_secret, pushed):
    row = pushed()
    # delivered, stored, but its task never ran (no on-commit execution here: as if the message was lost)
    assert post(client, stripe_event("evt_l", "invoice.finalized", invoice_object(row, "open"))).status_code == 200
    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.RECEIVED
    assert webhooks.stripe_events_retry_failed() == 0  # too recent: its task may still be on its way
    later = event.received_at + timedelta(minutes=6)
    assert webhooks.stripe_events_retry_failed(now=later) == 1
    row.refresh_from_db()
    assert row.stripe_status == "open"
