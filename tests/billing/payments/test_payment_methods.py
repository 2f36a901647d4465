"""Customers can pay: the dashboard opens Stripe Checkout in setup mode; its completion (a signed webhook)
makes the saved card the customer's default; invoices are charged to the default card, and a customer
without one gets an invoice Stripe sends with a due date and a hosted page (never a charge bound to fail).
Card changes made in Stripe (attached, detached, the customer's default) are followed."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from billing.customers.models import CustomerUser
from billing.payments.models import StripeCustomer, SyncState
from billing.payments.services import stripe_customer_sync, stripe_invoice_push, stripe_invoice_sync_schedule
from tests.billing.payments.test_webhooks import post, stripe_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def ann(client, acme, django_user_model):
    user = django_user_model.objects.create_user(username="ann", password="pw-ann-123")
    CustomerUser.objects.create(user=user, customer=acme)
    client.force_login(user)
    return client


@pytest.fixture
def deliver(client, celery_eager, django_capture_on_commit_callbacks):
    def send(event: dict[str, Any]) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            assert post(client, event).status_code == 200

    return send


def saved_card(localstripe, stripe_customer_id: str) -> tuple[str, str]:
    """What Checkout does when the customer saves a card: a payment method attached to the customer and a
    SetupIntent confirmed with it (made in localstripe). Returns (setup intent id, payment method id)."""
    raw = stripe.StripeClient("sk_test_tollgate", base_addresses={"api": localstripe.url})
    card = raw.v1.payment_methods.create({"type": "card", "card": {"number": "4242424242424242", "exp_month": 12,
                                                                    "exp_year": 2030, "cvc": "123"}})
    raw.v1.payment_methods.attach(card.id, {"customer": stripe_customer_id})
    intent = raw.v1.setup_intents.create({"customer": stripe_customer_id})
    raw.v1.setup_intents.confirm(intent.id, {"payment_method": card.id})
    return intent.id, card.id


def test_without_a_card_the_invoice_is_sent_with_a_due_date(stripe_on, acme, make_invoice, settings):
    settings.STRIPE_DAYS_UNTIL_DUE = 14
    invoice = make_invoice(acme, [(500, "Base fee")])
    stripe_invoice_sync_schedule(invoice=invoice)
    assert stripe_invoice_push(invoice_pk=invoice.pk).state == SyncState.SYNCED  # type: ignore[union-attr]
    [create] = stripe_on.calls("post", "/v1/invoices")
    assert (create.form["collection_method"], create.form["days_until_due"]) == ("send_invoice", "14")


def test_the_dashboard_opens_checkout_and_its_completion_makes_the_card_the_default(
        ann, stripe_on, localstripe, deliver, acme, make_invoice):
    page = ann.get("/dashboard/acme-co/settings/").content.decode()
    assert 'data-payment-method="none"' in page and "Add a card" in page
    # when the customer asks to add a card
    response = ann.post("/dashboard/acme-co/settings/payment-method")
    assert response.status_code == 302 and response["Location"].startswith("https://checkout.stripe.com/c/pay/cs_")
    [session] = stripe_on.calls("post", "/v1/checkout/sessions")
    stripe_customer_id = StripeCustomer.objects.get(customer=acme).stripe_customer_id
    assert stripe_customer_id
    assert session.form["mode"] == "setup" and session.form["customer"] == stripe_customer_id
    assert session.form["allowed_payment_method_types[0]"] == "card"
    assert session.form["success_url"] == "http://testserver/dashboard/acme-co/settings/?saved=payment-method"
    assert session.idempotency_key and session.idempotency_key.startswith(f"tg-inst-a-customer-{acme.pk}-setup-")
    # and Stripe reports the completed page
    setup_intent, card = saved_card(localstripe, stripe_customer_id)
    deliver(stripe_event("evt_cs", "checkout.session.completed", {
        "id": "cs_test_1", "object": "checkout.session", "mode": "setup", "status": "complete",
        "customer": stripe_customer_id, "setup_intent": setup_intent}))
    # then the card is the default in Stripe and here
    assert StripeCustomer.objects.get(customer=acme).default_payment_method == card
    [remote] = [c for c in localstripe.objects("customer") if c.id == stripe_customer_id]
    assert remote.invoice_settings["default_payment_method"] == card
    assert 'data-payment-method="card"' in ann.get("/dashboard/acme-co/settings/").content.decode()
    # and the next invoice is charged to it
    invoice = make_invoice(acme, [(500, "Base fee")])
    stripe_invoice_sync_schedule(invoice=invoice)
    stripe_invoice_push(invoice_pk=invoice.pk)
    create = stripe_on.calls("post", "/v1/invoices")[-1]
    assert create.form["collection_method"] == "charge_automatically" and "days_until_due" not in create.form


def test_checkout_while_stripe_is_off_says_so(ann, settings):
    settings.STRIPE_SECRET_KEY = ""
    page = ann.get("/dashboard/acme-co/settings/").content.decode()
    assert "Add a card" not in page
    response = ann.post("/dashboard/acme-co/settings/payment-method")
    assert response.status_code == 503 and "Stripe is not available" in response.content.decode()


def test_card_changes_made_in_stripe_are_followed(stripe_on, localstripe, deliver, acme):
    stripe_customer_sync(customer_pk=acme.pk)
    row = StripeCustomer.objects.get(customer=acme)
    assert row.stripe_customer_id
    _, card = saved_card(localstripe, row.stripe_customer_id)
    # attached to a customer without a default: it becomes the default (in Stripe too)
    deliver(stripe_event("evt_pa", "payment_method.attached", {"id": card, "object": "payment_method",
                                                                "customer": row.stripe_customer_id}))
    row.refresh_from_db()
    assert row.default_payment_method == card
    updates = [c for c in stripe_on.calls("post", f"/v1/customers/{row.stripe_customer_id}")
               if "invoice_settings[default_payment_method]" in c.form]
    assert [c.form["invoice_settings[default_payment_method]"] for c in updates] == [card]
    # detached: no default any more, invoices are sent
    deliver(stripe_event("evt_pd", "payment_method.detached", {"id": card, "object": "payment_method", "customer": None}))
    row.refresh_from_db()
    assert row.default_payment_method == ""
    # the customer's default set in Stripe's dashboard
    deliver(stripe_event("evt_cu", "customer.updated", {"id": row.stripe_customer_id, "object": "customer",
                                                         "invoice_settings": {"default_payment_method": "pm_other"}}))
    row.refresh_from_db()
    assert row.default_payment_method == "pm_other"
