"""Customers see where to pay: "Pay now" on the dashboard's invoice list and on the invoice document links
to Stripe's hosted invoice page while Stripe collects it, or to the invoice's Paystack checkout; a paid
invoice has none."""

from __future__ import annotations

import pytest

from billing.catalog.models import Plan
from billing.customers.models import CustomerUser
from billing.invoicing.models import Invoice
from billing.invoicing.services import invoice_mark_paid
from billing.payments.models import BillingMode, StripeInvoiceSync, SyncState
from billing.payments.paystack_services import paystack_payment_link, paystack_payment_schedule
from billing.payments.services import plan_billing_mode_set, stripe_invoice_push, stripe_invoice_sync_schedule

pytestmark = pytest.mark.django_db


@pytest.fixture
def ann(client, acme, django_user_model):
    user = django_user_model.objects.create_user(username="ann", password="pw-ann-123")
    CustomerUser.objects.create(user=user, customer=acme)
    client.force_login(user)
    return client


def row_of(page: str, invoice: Invoice) -> str:
    return page.split(f'data-invoice="{invoice.pk}"')[1].split("</tr>")[0]


def test_an_invoice_stripe_collects_links_to_its_hosted_page_until_paid(ann, stripe_on, acme, make_invoice):
    invoice = make_invoice(acme, [(9900, "Base fee")])
    stripe_invoice_sync_schedule(invoice=invoice)
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row is not None and row.state == SyncState.SYNCED
    row.hosted_invoice_url = "https://invoice.stripe.com/i/acct_1/test_abc"  # Stripe's answer (localstripe has none)
    row.save()
    page = ann.get("/dashboard/acme-co/invoices/").content.decode()
    assert 'class="pay-now" href="https://invoice.stripe.com/i/acct_1/test_abc"' in row_of(page, invoice)
    assert "https://invoice.stripe.com/i/acct_1/test_abc" in ann.get(f"/invoices/{invoice.pk}/").content.decode()
    invoice_mark_paid(invoice=invoice, at=invoice.finalized_at)
    StripeInvoiceSync.objects.filter(pk=row.pk).update(stripe_status="paid")
    page = ann.get("/dashboard/acme-co/invoices/").content.decode()
    assert "Pay now" not in row_of(page, invoice)


def test_an_invoice_paystack_collects_links_to_its_checkout(ann, paystack_on, naira_invoice):
    paystack_payment_schedule(invoice=naira_invoice)
    link = paystack_payment_link(invoice_pk=naira_invoice.pk)
    assert link is not None and link.authorization_url
    page = ann.get("/dashboard/acme-co/invoices/").content.decode()
    assert f'class="pay-now" href="{link.authorization_url}"' in row_of(page, naira_invoice)
    document = ann.get(f"/invoices/{naira_invoice.pk}/").content.decode()
    assert link.authorization_url in document
    assert link.authorization_url not in ann.get(f"/invoices/{naira_invoice.pk}/?print=1").content.decode()


def test_an_invoice_without_a_provider_page_has_no_pay_link(ann, acme, make_invoice):
    metered = Plan.objects.create(key="metered", name="Metered", currency="USD")
    plan_billing_mode_set(plan=metered, mode=BillingMode.STRIPE_METERS)
    invoice = make_invoice(acme, [(500, "LLM tokens")], plan=metered)
    page = ann.get("/dashboard/acme-co/invoices/").content.decode()
    assert "Pay now" not in row_of(page, invoice)
