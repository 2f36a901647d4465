"""The console's invoice page: each invoice's Stripe sync state, and a retry for failed pushes."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from billing.payments.models import StripeInvoiceSync, SyncState
from billing.payments.services import stripe_invoice_push, stripe_invoice_sync_schedule

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    client.force_login(get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True))
    return client


def test_staff_see_each_invoice_with_its_stripe_sync_state_and_retry_a_failed_push(
        staff, stripe_on, localstripe, celery_eager, acme, make_invoice, django_capture_on_commit_callbacks):
    # given a push that failed during an outage
    invoice = make_invoice(acme, [(500, "Base fee")])
    stripe_invoice_sync_schedule(invoice=invoice)
    localstripe.stop()
    stripe_invoice_push(invoice_pk=invoice.pk)
    localstripe.start()
    page = staff.get("/console/invoices/").content.decode()
    assert invoice.number in page and "sync-pending" in page and "APIConnectionError" in page
    assert f"/console/invoices/{invoice.pk}/stripe-retry" in page
    # when the operator retries
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(f"/console/invoices/{invoice.pk}/stripe-retry")
    # then it is pushed now, not at the end of its backoff
    assert response.status_code == 302
    row = StripeInvoiceSync.objects.get(invoice=invoice)
    assert row.state == SyncState.SYNCED
    page = staff.get("/console/invoices/?state=synced").content.decode()
    assert "sync-synced" in page and row.stripe_invoice_id in page and "push to Stripe queued" in page
    assert f"/console/invoices/{invoice.pk}/stripe-retry" not in page


def test_the_invoice_page_is_for_staff_only(client, acme):
    assert client.get("/console/invoices/").status_code == 302
    assert client.post("/console/invoices/1/stripe-retry").status_code == 302
    client.force_login(get_user_model().objects.create_user("dev", password="pw-123456"))
    assert client.get("/console/invoices/").status_code == 403
    assert client.post("/console/invoices/1/stripe-retry").status_code == 403
