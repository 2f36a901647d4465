"""Paystack, the second provider: a plan in paystack_invoices mode gets each finalized invoice's payment
link from Paystack's transaction initialize (through the recording transport, answering with Paystack's
documented objects), and ``POST /webhooks/paystack`` verifies ``x-paystack-signature`` (computed here
independently: hex HMAC-SHA512 of the raw body) and processes each event exactly once; ``charge.success``
marks the invoice paid."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from billing.catalog.money import from_minor, to_minor
from billing.invoicing.models import Invoice
from billing.invoicing.signals import invoice_finalized
from billing.payments.models import PaystackEvent, PaystackPayment, StripeInvoiceSync, SyncState
from billing.payments.paystack_services import paystack_payment_link, paystack_payment_schedule, paystack_sync_pending
from billing.payments.services import stripe_invoice_sync_schedule
from tests.billing.payments.conftest import PAYSTACK_BASE as BASE
from tests.billing.payments.conftest import PAYSTACK_SECRET as SECRET
from tests.billing.payments.conftest import after_backoff
from tests.billing.payments.paystack_doubles import FIXTURES

pytestmark = pytest.mark.django_db
URL = "/webhooks/paystack"


def signature(body: bytes, secret: str = SECRET) -> str:
    """Computed here, as Paystack does, not with the code under test."""
    return hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()


def charge_success(reference: str, amount: int, *, transaction_id: int = 302961, currency: str = "NGN") -> bytes:
    event = copy.deepcopy(FIXTURES["charge_success"])
    event["data"].update(id=transaction_id, reference=reference, amount=amount, currency=currency)
    return json.dumps(event).encode()


def post(client: Any, body: bytes, sig: str | None) -> Any:
    headers = {} if sig is None else {"HTTP_X_PAYSTACK_SIGNATURE": sig}
    return client.post(URL, data=body, content_type="application/json", **headers)


@pytest.fixture
def linked(paystack_on, naira_invoice) -> PaystackPayment:
    paystack_payment_schedule(invoice=naira_invoice)
    row = paystack_payment_link(invoice_pk=naira_invoice.pk)
    assert row is not None and row.state == SyncState.SYNCED, row and row.last_error
    return row


# --- currency -----------------------------------------------------------------------------------------------
def test_naira_is_in_the_currency_table_in_kobo():
    assert to_minor(Decimal("17345.50"), "NGN") == 1734550
    assert from_minor(1734550, "NGN") == Decimal("17345.50")


# --- the payment link ------------------------------------------------------------------------------------------
def test_a_finalized_invoice_of_a_paystack_plan_gets_a_payment_link(paystack_on, naira_invoice, celery_eager,
                                                                     django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        invoice_finalized.send(sender=Invoice, invoice_id=naira_invoice.pk)
    row = PaystackPayment.objects.get(invoice=naira_invoice)
    assert row.state == SyncState.SYNCED, row.last_error
    [call] = paystack_on.calls("/api/transaction/initialize")
    assert call.method == "POST" and call.url == f"{BASE}/transaction/initialize"
    assert call.headers["Authorization"] == f"Bearer {SECRET}"
    assert call.body == {"email": "ap@acme.test", "amount": "1734550", "currency": "NGN",
                         "reference": f"tg-inst-a-invoice-{naira_invoice.pk}",
                         "metadata": {"tollgate_invoice_id": str(naira_invoice.pk), "tollgate_number": naira_invoice.number,
                                      "tollgate_installation": "inst-a", "paystack_customer": "CUS_000001"}}
    assert row.reference == f"tg-inst-a-invoice-{naira_invoice.pk}"
    assert row.authorization_url.startswith("https://checkout.paystack.com/") and row.access_code
    # Stripe does not collect it
    assert not StripeInvoiceSync.objects.filter(invoice=naira_invoice).exists()
    assert stripe_invoice_sync_schedule(invoice=naira_invoice) is None


def test_a_lost_answer_is_followed_by_a_new_reference_never_a_second_link_for_the_first(paystack_on, naira_invoice):
    paystack_payment_schedule(invoice=naira_invoice)
    paystack_on.lose_answers = 1
    row = paystack_payment_link(invoice_pk=naira_invoice.pk)
    assert row is not None and row.state == SyncState.PENDING and "timed out" in row.last_error
    row = paystack_payment_link(invoice_pk=naira_invoice.pk, now=after_backoff(row))
    assert row is not None and row.state == SyncState.SYNCED, row and row.last_error
    # Paystack refused the first reference again (made, answer lost); the second one is the link
    sent = [c.body["reference"] for c in paystack_on.calls("/api/transaction/initialize")]
    base = f"tg-inst-a-invoice-{naira_invoice.pk}"
    assert sent == [base, base, f"{base}-2"]
    assert row.reference == f"{base}-2"


def test_an_outage_leaves_the_link_pending_and_the_sweep_makes_it(paystack_on, naira_invoice):
    paystack_payment_schedule(invoice=naira_invoice)
    paystack_on.down = True
    row = paystack_payment_link(invoice_pk=naira_invoice.pk)
    assert row is not None and row.state == SyncState.PENDING
    paystack_on.down = False
    assert paystack_sync_pending(now=after_backoff(row))["paystack_links"] == 1
    row.refresh_from_db()
    assert row.state == SyncState.SYNCED and row.authorization_url


def test_a_customer_without_email_cannot_get_a_link(paystack_on, acme, naira_plan, make_invoice):
    invoice = make_invoice(acme, [(100, "Base fee")], plan=naira_plan, currency="NGN")
    paystack_payment_schedule(invoice=invoice)
    row = paystack_payment_link(invoice_pk=invoice.pk)
    assert row is not None and row.state == SyncState.FAILED and "email" in row.last_error
    assert paystack_on.requests == []


# --- the webhook ---------------------------------------------------------------------------------------------------
def test_a_valid_charge_success_marks_the_invoice_paid_once(client, linked, celery_eager,
                                                           django_capture_on_commit_callbacks):
    body = charge_success(linked.reference or "", 1734550)
    with django_capture_on_commit_callbacks(execute=True):
        first = post(client, body, signature(body))
    assert first.status_code == 200
    assert first.json() == {"received": True, "duplicate": False, "status": "received"}
    invoice = Invoice.objects.get(pk=linked.invoice_id)
    assert invoice.status == Invoice.Status.PAID
    assert invoice.paid_at == datetime(2016, 9, 30, 21, 10, 19, tzinfo=timezone.utc)
    with django_capture_on_commit_callbacks(execute=True):
        again = post(client, body, signature(body))
    assert again.status_code == 200
    assert again.json() == {"received": True, "duplicate": True, "status": "processed"}
    event = PaystackEvent.objects.get()
    assert (event.event_key, event.status, event.attempts) == ("charge.success:302961", "processed", 1)
    linked.refresh_from_db()
    assert linked.paid_at == invoice.paid_at


@pytest.mark.parametrize("case", ["tampered", "wrong secret", "missing", "not configured", "not hex"])
def test_a_bad_signature_is_refused_with_400_and_stores_nothing(client, linked, settings, case):
    body = charge_success(linked.reference or "", 1734550)
    sig: str | None = signature(body)
    if case == "tampered":
        body = body.replace(b"1734550", b"1734551")
    elif case == "wrong secret":
        sig = signature(body, "sk_test_someone_else")
    elif case == "missing":
        sig = None
    elif case == "not configured":
        settings.PAYSTACK_SECRET_KEY = ""
    elif case == "not hex":
        sig = "not-a-signature"
    response = post(client, body, sig)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert not PaystackEvent.objects.exists()
    assert Invoice.objects.get(pk=linked.invoice_id).status == Invoice.Status.FINALIZED


def test_a_charge_of_another_amount_fails_visibly_and_pays_nothing(client, linked, celery_eager,
                                                                   django_capture_on_commit_callbacks):
    body = charge_success(linked.reference or "", 1000)
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, body, signature(body)).status_code == 200
    event = PaystackEvent.objects.get()
    assert event.status == "failed" and "settle it by hand" in event.error
    assert Invoice.objects.get(pk=linked.invoice_id).status == Invoice.Status.FINALIZED


def test_a_charge_that_is_not_ours_is_acknowledged_and_ignored(client, paystack_on, celery_eager,
                                                              django_capture_on_commit_callbacks):
    body = charge_success("someone-elses-reference", 5000)
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, body, signature(body)).status_code == 200
    assert PaystackEvent.objects.get().status == "ignored"


def test_an_unhandled_event_is_acknowledged_and_ignored(client, paystack_on, celery_eager,
                                                       django_capture_on_commit_callbacks):
    body = json.dumps({"event": "transfer.success", "data": {"id": 77, "reference": "x"}}).encode()
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, body, signature(body)).status_code == 200
    assert PaystackEvent.objects.get().status == "ignored"


def test_an_event_whose_task_was_lost_is_processed_by_the_sweep(client, linked):
    body = charge_success(linked.reference or "", 1734550)
    assert post(client, body, signature(body)).status_code == 200  # on-commit task never ran
    event = PaystackEvent.objects.get()
    assert event.status == "received"
    paystack_sync_pending(now=event.received_at.replace(year=event.received_at.year + 1))
    event.refresh_from_db()
    assert event.status == "processed"
    assert Invoice.objects.get(pk=linked.invoice_id).status == Invoice.Status.PAID


# --- refunds -------------------------------------------------------------------------------------------------------
def refund(transaction_reference: str, amount: int, refund_reference: str) -> bytes:
    event = copy.deepcopy(FIXTURES["refund_processed"])
    event["data"].update(transaction_reference=transaction_reference, amount=amount, refund_reference=refund_reference)
    return json.dumps(event).encode()


def test_a_refund_becomes_one_credit_note_and_over_refunding_fails_visibly(client, linked, celery_eager,
                                                                          django_capture_on_commit_callbacks):
    def deliver(body: bytes) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            response = post(client, body, signature(body))
        assert response.status_code == 200
        return response.json()

    paid = charge_success(linked.reference or "", 1734550)
    deliver(paid)
    partial = refund(linked.reference or "", 234550, "TRF_one")
    assert deliver(partial)["duplicate"] is False
    assert deliver(partial)["duplicate"] is True  # the same refund again: one credit note
    invoice = Invoice.objects.get(pk=linked.invoice_id)
    [note] = invoice.credit_notes.all()
    assert (note.total_minor, note.currency, note.kind) == (-234550, "NGN", Invoice.Kind.CREDIT_NOTE)
    assert "TRF_one" in note.reason
    deliver(refund(linked.reference or "", 1500001, "TRF_two"))  # more than is left to credit (1500000)
    event = PaystackEvent.objects.get(event_key="refund.processed:TRF_two")
    assert event.status == "failed" and "settle it by hand" in event.error
    assert invoice.credit_notes.count() == 1
    deliver(refund(linked.reference or "", 1500000, "TRF_three"))  # exactly the rest
    assert sorted(invoice.credit_notes.values_list("total_minor", flat=True)) == [-1500000, -234550]
