"""Stripe's invoice states followed exactly: a failed payment's real decline reason (read from the payment),
stale events ignored by ``created``, ``invoice.marked_uncollectible`` from Stripe's dunning, every arrival
order ending in Stripe's latest state; and what a push sends: the pinned API version, no zero lines, our
invoice number on Stripe's invoice."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from billing.catalog.models import Plan
from billing.invoicing.models import Invoice
from billing.payments.models import BillingMode, StripeCustomer, StripeEvent, StripeInvoiceSync, SyncState
from billing.payments.services import plan_billing_mode_set, stripe_invoice_push, stripe_invoice_sync_schedule
from tests.billing.payments.test_webhooks import T0, invoice_object, stripe_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def deliver(client, webhook_secret, celery_eager, django_capture_on_commit_callbacks):
    from tests.billing.payments.test_webhooks import post

    def send(event: dict[str, Any]) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            response = post(client, event)
        assert response.status_code == 200, response.content
        return response

    return send


@pytest.fixture
def pushed(make_invoice):
    from billing.customers.services import customer_create

    numbers = itertools.count(1)

    def make() -> StripeInvoiceSync:
        n = next(numbers)
        invoice = make_invoice(customer_create(external_id=f"c-{n}", name=f"C {n}"), [(1000 + n, "Base fee")])
        return StripeInvoiceSync.objects.create(invoice=invoice, stripe_invoice_id=f"in_state_{n}",
                                                state=SyncState.SYNCED, stripe_status="open")

    return make


def failed(row: StripeInvoiceSync, event_id: str, attempt: int, created: int) -> dict[str, Any]:
    obj = {**invoice_object(row, "open"), "attempt_count": attempt,
           "last_finalization_error": {"message": "finalization is not a payment"}}
    return stripe_event(event_id, "invoice.payment_failed", obj, created=created)


# --- invoice.payment_failed ----------------------------------------------------------------------------
def test_a_failed_payment_keeps_the_decline_reason_read_from_the_payment(stripe_on, deliver, pushed):
    row = pushed()
    stripe_on.decline(row.stripe_invoice_id, code="card_declined", decline_code="insufficient_funds",
                      message="Your card has insufficient funds.", created=T0)
    deliver(failed(row, "evt_f1", 1, T0 + 1))
    row.refresh_from_db()
    assert row.last_payment_error == "insufficient_funds: Your card has insufficient funds."
    assert row.payment_failures == 1
    [call] = stripe_on.calls("get", "/v1/invoice_payments")
    assert call.form["invoice"] == row.stripe_invoice_id


def test_the_newest_payment_of_several_gives_the_reason(stripe_on, deliver, pushed):
    row = pushed()
    stripe_on.decline(row.stripe_invoice_id, code="card_declined", decline_code="generic_decline", message="Declined.",
                      created=T0)
    stripe_on.decline(row.stripe_invoice_id, code="expired_card", decline_code="", message="Your card has expired.",
                      created=T0 + 86400)
    deliver(failed(row, "evt_f2", 2, T0 + 86401))
    row.refresh_from_db()
    assert (row.last_payment_error, row.payment_failures) == ("expired_card: Your card has expired.", 2)


def test_an_outage_reading_the_reason_fails_the_event_for_the_sweep_to_retry(stripe_on, deliver, pushed):
    row = pushed()
    stripe_on.fail_on.append(("get", "/v1/invoice_payments"))
    deliver(failed(row, "evt_out", 1, T0 + 1))
    event = StripeEvent.objects.get(event_id="evt_out")
    assert event.status == StripeEvent.Status.FAILED and "timed out" in event.error
    row.refresh_from_db()
    assert row.payment_failures == 0  # rolled back with the handler


def test_a_failure_older_than_the_payment_that_followed_it_changes_nothing(deliver, pushed):
    row = pushed()
    deliver(stripe_event("evt_p", "invoice.paid", invoice_object(row, "paid", paid_at=T0 + 60), created=T0 + 60))
    deliver(failed(row, "evt_late", 1, T0 + 30))
    row.refresh_from_db()
    assert (row.stripe_status, row.last_payment_error) == ("paid", "")
    assert Invoice.objects.get(pk=row.invoice_id).status == Invoice.Status.PAID


def test_failures_delivered_in_reverse_keep_the_newest_reason(deliver, pushed):
    row = pushed()  # Stripe not configured here: the reason is the attempt number
    deliver(failed(row, "evt_2", 2, T0 + 20))
    deliver(failed(row, "evt_1", 1, T0 + 10))
    row.refresh_from_db()
    assert (row.payment_failures, row.last_payment_error) == (2, "payment attempt 2 failed")


# --- invoice.marked_uncollectible ----------------------------------------------------------------------------
def test_stripes_dunning_marks_the_invoice_uncollectible_and_a_later_payment_still_pays_it(deliver, pushed):
    row = pushed()
    deliver(stripe_event("evt_u", "invoice.marked_uncollectible", invoice_object(row, "uncollectible"), created=T0 + 5))
    row.refresh_from_db()
    invoice = Invoice.objects.get(pk=row.invoice_id)
    assert (row.stripe_status, invoice.status) == ("uncollectible", Invoice.Status.UNCOLLECTIBLE)
    deliver(stripe_event("evt_p", "invoice.paid", invoice_object(row, "paid", paid_at=T0 + 9), created=T0 + 9))
    row.refresh_from_db()
    invoice.refresh_from_db()
    assert (row.stripe_status, invoice.status) == ("paid", Invoice.Status.PAID)


STREAM = [("invoice.finalized", "open"), ("invoice.payment_failed", "open"),
          ("invoice.marked_uncollectible", "uncollectible"), ("invoice.paid", "paid")]


def test_every_arrival_order_ends_in_stripes_latest_state(deliver, pushed):
    """Stripe's true order: finalized, a failure, dunning gives up, then the customer pays after all."""
    outcomes = set()
    for n, order in enumerate(itertools.permutations(range(len(STREAM)))):
        row = pushed()
        for k in order:
            type_, status = STREAM[k]
            obj = {**invoice_object(row, status, paid_at=T0 + 3), "attempt_count": 1}
            deliver(stripe_event(f"evt_{n}_{k}", type_, obj, created=T0 + k))
        row.refresh_from_db()
        invoice = Invoice.objects.get(pk=row.invoice_id)
        outcomes.add((row.stripe_status, row.payment_failures, row.last_payment_error, invoice.status,
                      int(invoice.paid_at.timestamp()) if invoice.paid_at else None))
    assert outcomes == {("paid", 1, "", Invoice.Status.PAID, T0 + 3)}
    assert not StripeEvent.objects.filter(status=StripeEvent.Status.FAILED).exists()


def test_a_deleted_stripe_customer_stops_its_pushes(deliver, stripe_on, acme, make_invoice):
    from billing.payments.services import stripe_customer_sync

    stripe_customer_sync(customer_pk=acme.pk)
    customer_row = StripeCustomer.objects.get(customer=acme)
    deliver(stripe_event("evt_cd", "customer.deleted", {"id": customer_row.stripe_customer_id, "object": "customer",
                                                         "deleted": True}))
    customer_row.refresh_from_db()
    assert customer_row.deleted_at is not None
    invoice = make_invoice(acme, [(500, "Base fee")])
    stripe_invoice_sync_schedule(invoice=invoice)
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row is not None and row.state == SyncState.FAILED and "deleted in Stripe" in row.last_error
    assert stripe_on.calls("post", "/v1/invoices") == []


# --- what a push sends ---------------------------------------------------------------------------------------
def test_every_request_asks_for_the_pinned_api_version(stripe_on, acme, make_invoice, settings):
    from billing.payments.services import stripe_customer_sync

    assert settings.STRIPE_API_VERSION == "2026-10-28.endive"  # the default, documented in docs/payments.md
    settings.STRIPE_API_VERSION = "2025-03-31.basil"
    stripe_customer_sync(customer_pk=acme.pk)
    assert {r.stripe_version for r in stripe_on.requests} == {"2025-03-31.basil"}


def test_zero_lines_are_not_pushed_and_our_number_is_on_stripes_invoice(stripe_on, localstripe, acme, make_invoice):
    invoice = make_invoice(acme, [(9900, "Base fee"), (0, "API calls: within the free tier"), (7, "LLM tokens")])
    stripe_invoice_sync_schedule(invoice=invoice)
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row is not None and row.state == SyncState.SYNCED, row and row.last_error
    items = stripe_on.calls("post", "/v1/invoiceitems")
    assert [(c.form["amount"], c.form["metadata[tollgate_line]"]) for c in items] == [("9900", "1"), ("7", "3")]
    assert list(row.items.values_list("position", flat=True).order_by("position")) == [1, 3]
    assert row.stripe_total_minor == invoice.total_minor == 9907
    [create] = stripe_on.calls("post", "/v1/invoices")
    assert create.form["custom_fields[0][name]"] == "Invoice"
    assert create.form["custom_fields[0][value]"] == invoice.number
    assert create.form["metadata[tollgate_number]"] == invoice.number
    assert create.form["description"] == f"Tollgate invoice {invoice.number}"


def test_invoices_of_plans_stripe_bills_show_as_billed_by_stripe(client, acme, make_invoice, django_user_model):
    from billing.customers.models import CustomerUser

    metered = Plan.objects.create(key="metered", name="Metered", currency="USD")
    plan_billing_mode_set(plan=metered, mode=BillingMode.STRIPE_METERS)
    statement = make_invoice(acme, [(500, "LLM tokens")], plan=metered)
    ours = make_invoice(acme, [(700, "Base fee")], month=2)
    user = django_user_model.objects.create_user(username="ann", password="pw-ann-123")
    CustomerUser.objects.create(user=user, customer=acme)
    client.force_login(user)
    page = client.get("/dashboard/acme-co/invoices/").content.decode()
    mine = page.split(f'data-invoice="{statement.pk}"')[1].split("</tr>")[0]
    other = page.split(f'data-invoice="{ours.pk}"')[1].split("</tr>")[0]
    assert "Billed by Stripe" in mine and "Open" not in mine
    assert ">Open<" in other  # the word the document uses too
    document = client.get(f"/invoices/{statement.pk}/").content.decode()
    assert "Billed by Stripe" in document and "Finalized" not in document
