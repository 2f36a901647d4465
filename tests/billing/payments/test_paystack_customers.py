"""Paystack customers: the first payment link of a Tollgate customer makes its Paystack customer (one per
invoice email, found again by email, never a second one), each link names it, and a reusable card that paid
an invoice becomes the card on file, shown on the customer's dashboard; an older payment delivered late or a
payment made as another Paystack customer never replaces it."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from billing.customers.models import CustomerUser
from billing.invoicing.models import Invoice
from billing.payments.models import PaystackCustomer, SyncState
from billing.payments.paystack_services import paystack_payment_link, paystack_payment_schedule
from tests.billing.payments.paystack_doubles import FIXTURES
from tests.billing.payments.test_paystack import post, signature

pytestmark = pytest.mark.django_db
LINES = [(1234550, "LLM tokens"), (500000, "Base fee")]


def link(invoice: Invoice) -> str:
    paystack_payment_schedule(invoice=invoice)
    row = paystack_payment_link(invoice_pk=invoice.pk)
    assert row is not None and row.state == SyncState.SYNCED, row and row.last_error
    return row.reference or ""


def paid(reference: str, *, customer_code: str, paid_at: str, last4: str, transaction_id: int,
         reusable: bool = True) -> bytes:
    event = copy.deepcopy(FIXTURES["charge_success"])
    event["data"].update(id=transaction_id, reference=reference, amount=1734550, currency="NGN", paid_at=paid_at)
    event["data"]["customer"]["customer_code"] = customer_code
    event["data"]["authorization"].update(last4=last4, reusable=reusable, authorization_code=f"AUTH_{last4}")
    return json.dumps(event).encode()


@pytest.fixture
def deliver(client, celery_eager, django_capture_on_commit_callbacks):
    def send(body: bytes) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            assert post(client, body, signature(body)).status_code == 200

    return send


def test_the_first_link_makes_the_paystack_customer_once(paystack_on, acme, naira_plan, naira_invoice, make_invoice):
    link(naira_invoice)
    link(make_invoice(acme, LINES, plan=naira_plan, currency="NGN", month=2))
    [made] = paystack_on.calls("/api/customer")
    assert made.method == "POST" and made.headers["Authorization"].startswith("Bearer ")
    assert made.body == {"email": "ap@acme.test", "first_name": "Acme", "last_name": "",
                         "metadata": {"tollgate_customer": "acme-co", "tollgate_installation": "inst-a"}}
    row = PaystackCustomer.objects.get(customer=acme)
    assert (row.email, row.customer_code) == ("ap@acme.test", "CUS_000001")
    names = {c.body["metadata"]["paystack_customer"] for c in paystack_on.calls("/api/transaction/initialize")}
    assert names == {"CUS_000001"}


def test_a_lost_customer_row_finds_the_same_paystack_customer_by_email(paystack_on, acme, naira_plan, naira_invoice,
                                                                        make_invoice):
    link(naira_invoice)
    PaystackCustomer.objects.all().delete()  # a restore from an older backup, say
    link(make_invoice(acme, LINES, plan=naira_plan, currency="NGN", month=2))
    assert len(paystack_on.calls("/api/customer")) == 2
    assert len(paystack_on.customers) == 1
    assert PaystackCustomer.objects.get(customer=acme).customer_code == "CUS_000001"


def test_a_new_invoice_email_is_a_new_paystack_customer_and_forgets_the_old_card(
        paystack_on, acme, naira_plan, naira_invoice, make_invoice, deliver):
    deliver(paid(link(naira_invoice), customer_code="CUS_000001", paid_at="2026-11-02T10:00:00Z", last4="4081",
                 transaction_id=1))
    assert PaystackCustomer.objects.get(customer=acme).card == "mastercard ending 4081, expires 08/2020"
    acme.email = "billing@acme.test"
    acme.save()
    link(make_invoice(acme, LINES, plan=naira_plan, currency="NGN", month=2))
    row = PaystackCustomer.objects.get(customer=acme)
    assert (row.email, row.customer_code, row.card, row.authorization_code) == ("billing@acme.test", "CUS_000002", "", "")


def test_the_newest_reusable_card_that_paid_is_on_file(paystack_on, acme, naira_plan, naira_invoice, make_invoice,
                                                      deliver):
    first, second = link(naira_invoice), link(make_invoice(acme, LINES, plan=naira_plan, currency="NGN", month=2))
    deliver(paid(second, customer_code="CUS_000001", paid_at="2026-11-05T10:00:00Z", last4="1111", transaction_id=2))
    # an older payment delivered late does not replace it
    deliver(paid(first, customer_code="CUS_000001", paid_at="2026-11-01T10:00:00Z", last4="2222", transaction_id=1))
    row = PaystackCustomer.objects.get(customer=acme)
    assert (row.authorization_code, row.card) == ("AUTH_1111", "mastercard ending 1111, expires 08/2020")
    assert Invoice.objects.filter(customer=acme, status=Invoice.Status.PAID).count() == 2


@pytest.mark.parametrize("case", ["not reusable", "another paystack customer"])
def test_a_card_paystack_cannot_charge_again_for_this_customer_is_not_kept(paystack_on, acme, naira_invoice, deliver,
                                                                           case):
    code = "CUS_someone_else" if case == "another paystack customer" else "CUS_000001"
    deliver(paid(link(naira_invoice), customer_code=code, paid_at="2026-11-02T10:00:00Z", last4="4081",
                 transaction_id=1, reusable=case != "not reusable"))
    assert Invoice.objects.get(pk=naira_invoice.pk).status == Invoice.Status.PAID
    row = PaystackCustomer.objects.get(customer=acme)
    assert (row.customer_code, row.card, row.authorization_code) == ("CUS_000001", "", "")


def test_the_dashboard_shows_the_paystack_card(client, paystack_on, acme, naira_invoice, deliver, django_user_model):
    deliver(paid(link(naira_invoice), customer_code="CUS_000001", paid_at="2026-11-02T10:00:00Z", last4="4081",
                 transaction_id=1))
    user = django_user_model.objects.create_user(username="ann", password="pw-ann-123")
    CustomerUser.objects.create(user=user, customer=acme)
    client.force_login(user)
    page: Any = client.get("/dashboard/acme-co/settings/")
    assert page.status_code == 200
    assert 'data-payment-method="paystack"' in page.content.decode()
    assert "mastercard ending 4081, expires 08/2020" in page.content.decode()
