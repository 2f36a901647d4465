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
    assert client.post("/console/payments/customer/1/retry").status_code == 403


def test_staff_retry_a_customer_and_a_meter_hour_that_could_not_be_pushed(
        staff, stripe_on, localstripe, celery_eager, acme, tokens_meter, django_capture_on_commit_callbacks):
    from datetime import datetime, timezone
    from decimal import Decimal

    from billing.catalog.models import Plan, Subscription
    from billing.payments.meters import meter_usage_report
    from billing.payments.models import BillingMode, MeterUsageReport, StripeCustomer
    from billing.payments.services import plan_billing_mode_set, stripe_customer_sync
    from billing.usage.models import HourlyRollup

    now = datetime(2026, 3, 10, 12, 25, tzinfo=timezone.utc)
    plan = Plan.objects.create(key="metered", name="Metered", currency="USD")
    plan_billing_mode_set(plan=plan, mode=BillingMode.STRIPE_METERS)
    Subscription.objects.create(customer=acme, plan=plan, start=datetime(2026, 3, 1, tzinfo=timezone.utc))
    HourlyRollup.objects.create(customer=acme, project_slot=0, meter=tokens_meter, dims_key="d", total=Decimal(42),
                                events=1, hour=datetime(2026, 3, 10, 10, tzinfo=timezone.utc))
    # given a customer and a meter hour left pending by an outage
    stripe_on.fail_on.append(("post", "/v1/customers"))
    stripe_customer_sync(customer_pk=acme.pk)
    meter_usage_report(now=now)
    customer_row, report = StripeCustomer.objects.get(customer=acme), MeterUsageReport.objects.get()
    assert customer_row.state == report.state == SyncState.PENDING
    page = staff.get("/console/invoices/").content.decode()
    assert f'id="customer-{customer_row.pk}"' in page and f'id="meter-hour-{report.pk}"' in page
    assert "timed out" in page
    # when the operator retries both, after the outage
    stripe_on.fail_on.clear()
    for path in (f"/console/payments/customer/{customer_row.pk}/retry", f"/console/payments/meter-hour/{report.pk}/retry"):
        with django_capture_on_commit_callbacks(execute=True):
            assert staff.post(path).status_code == 302
    # then both are pushed now, not at the end of their backoff
    customer_row.refresh_from_db()
    report.refresh_from_db()
    assert (customer_row.state, report.state) == (SyncState.SYNCED, SyncState.SYNCED), report.last_error
    assert report.reported_total == Decimal(42)
    page = staff.get("/console/invoices/").content.decode()
    assert "Nothing failed or waiting." in page and "retry queued" in page
    assert staff.post(f"/console/payments/customer/{customer_row.pk}/retry").status_code == 302  # synced: a warning
    assert "Nothing to retry" in staff.get("/console/invoices/").content.decode()
