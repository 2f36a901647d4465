"""Each event type is emitted where it happens, after commit, and reaches a subscribed endpoint once,
however often the thing that emits it repeats (an idempotent finalize, a repeated mark-paid, a second
alert check)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from billing.guardrails.alerts import alerts_check
from billing.invoicing import services as invoicing
from billing.invoicing.models import Invoice
from billing.notify.models import WebhookDelivery, WebhookEvent
from billing.usage.rollups import rollup_until_current
from tests import factories
from tests.billing.notify.conftest import Receiver
from tests.conftest import post_json

INVOICE_TYPES = ["invoice.finalized", "invoice.paid", "invoice.voided"]
UTC = timezone.utc
OCT = datetime(2026, 10, 1, tzinfo=UTC)
BASE_FEE = factories.catalog(factories.plan("pro", [{"meter": "llm_tokens", "model": "per_unit", "unit_price": "0.01"}],
                                            base_fee="10.00", effective_from="2024-01-01T00:00:00Z"))


def subscribe_pro(*customers: Any) -> None:
    for n, customer in enumerate(customers):
        factories.subscribe(customer, "pro", start=OCT, catalog_text=None if n else BASE_FEE)
        factories.send(factories.event(f"e-{n}", "2026-10-10T00:00:00Z", "100", customer=customer.external_id),
                       now=datetime(2026, 10, 12, tzinfo=UTC))


def close(now: datetime) -> list[Invoice]:
    """The beat's close-periods: October closes, then its invoices are finalized."""
    invoicing.periods_close(now=now)
    rollup_until_current(now=now + timedelta(days=1))
    return invoicing.periods_finalize(now=now + timedelta(days=1))


def use_tokens(customer: Any, quantity: str) -> None:
    at = datetime.now(UTC) - timedelta(seconds=5)
    factories.send(factories.event(f"e-{quantity}-{at.timestamp()}", at, quantity, customer=customer.external_id),
                   now=at + timedelta(seconds=1))


def endpoint(admin: Any, receiver: Receiver, events: list[str]) -> dict[str, Any]:
    response = post_json(admin, "/api/v1/webhook-endpoints", {"url": receiver.url, "events": events})
    assert response.status_code == 201, response.content
    return response.json()


def received(receiver: Receiver) -> Counter[tuple[str, str]]:
    """(type, id) -> requests received"""
    return Counter((r.json["type"], r.json["id"]) for r in receiver.requests)


@pytest.mark.django_db
def test_invoice_finalized_paid_and_voided_are_each_delivered_once(admin, receiver, acme, globex, celery_eager,
                                                                    django_capture_on_commit_callbacks):
    endpoint(admin, receiver, INVOICE_TYPES)
    subscribe_pro(acme, globex)
    at = datetime(2026, 11, 5, tzinfo=UTC)

    with django_capture_on_commit_callbacks(execute=True):
        close(datetime(2026, 11, 1, 1, tzinfo=UTC))
        close(datetime(2026, 11, 1, 2, tzinfo=UTC))  # finalizing again changes nothing
    acme_invoice = Invoice.objects.get(customer=acme, kind="invoice")
    globex_invoice = Invoice.objects.get(customer=globex, kind="invoice")
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(2):
            invoicing.invoice_mark_paid(invoice=acme_invoice, at=at)
            invoicing.invoice_void(invoice=globex_invoice, at=at, reason="duplicate order")

    finalized = {r.json["data"]["invoice"]["id"] for r in receiver.requests if r.json["type"] == "invoice.finalized"}
    assert finalized == {acme_invoice.pk, globex_invoice.pk}
    by_type = Counter(r.json["type"] for r in receiver.requests)
    assert by_type == {"invoice.finalized": 2, "invoice.paid": 1, "invoice.voided": 1}
    assert set(received(receiver).values()) == {1}  # every event id exactly once
    paid = next(r.json for r in receiver.requests if r.json["type"] == "invoice.paid")
    voided = next(r.json for r in receiver.requests if r.json["type"] == "invoice.voided")
    assert paid["data"]["invoice"]["id"] == acme_invoice.pk and paid["data"]["invoice"]["status"] == "paid"
    assert paid["data"]["invoice"]["customer"] == "acme-co" and paid["data"]["invoice"]["total_minor"] > 0
    assert voided["data"]["invoice"]["id"] == globex_invoice.pk and voided["data"]["invoice"]["status"] == "void"
    assert set(WebhookDelivery.objects.values_list("state", flat=True)) == {"delivered"}


@pytest.mark.django_db
@pytest.mark.ledger
def test_a_soft_limit_crossing_is_delivered_once_as_alert_soft_limit(admin, receiver, acme, celery_eager,
                                                                     django_capture_on_commit_callbacks):
    endpoint(admin, receiver, ["alert.soft_limit"])
    other = Receiver()
    try:
        endpoint(admin, other, ["invoice.paid"])  # not subscribed: gets nothing
        factories.subscribe(acme, "metered", start=datetime(2026, 1, 1, tzinfo=UTC), now=datetime.now(UTC),
                            catalog_text=factories.metered(hard="1000"))
        use_tokens(acme, "500")
        with django_capture_on_commit_callbacks(execute=True):
            alerts_check(customer_pk=acme.pk)  # below 80%: nothing
        assert receiver.requests == []
        use_tokens(acme, "350")
        with django_capture_on_commit_callbacks(execute=True):
            for _ in range(3):
                alerts_check(customer_pk=acme.pk)
        assert other.requests == []
    finally:
        other.close()

    [request] = receiver.requests
    body = request.json
    assert body["type"] == "alert.soft_limit"
    assert body["data"]["alert"] == {
        "customer": "acme-co", "target": "meter:llm_tokens", "percent": "80", "limit": "1000", "used": "850",
        "unit": "token", "crossed_at": body["data"]["alert"]["crossed_at"],
        "period_start": body["data"]["alert"]["period_start"], "period_end": body["data"]["alert"]["period_end"]}
    assert body["data"]["alert"]["crossed_at"].endswith("Z")
    assert WebhookEvent.objects.get().key.startswith("alert.soft_limit:")
    assert receiver.processed == {body["id"]: 1}


@pytest.mark.django_db
def test_a_failing_webhook_never_fails_what_emitted_it(admin, receiver, acme, monkeypatch,
                                                       django_capture_on_commit_callbacks):
    endpoint(admin, receiver, INVOICE_TYPES)

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("database hiccup")

    monkeypatch.setattr("billing.notify.receivers.event_emit", broken)
    subscribe_pro(acme)
    with django_capture_on_commit_callbacks(execute=True):
        [invoice] = close(datetime(2026, 11, 1, 1, tzinfo=UTC))
        invoicing.invoice_mark_paid(invoice=invoice, at=datetime(2026, 11, 5, tzinfo=UTC))
    assert Invoice.objects.get(pk=invoice.pk).status == "paid"
    assert receiver.requests == []
