"""The full flow against real Stripe in test mode: the manual check before a release (docs/payments.md).

Runs only when STRIPE_TEST_SECRET_KEY (an ``sk_test_...`` key) is set; skipped otherwise, which is the one
skip this suite allows. It creates a customer, pushes and finalizes an invoice, creates a Billing Meter and
reports an hour of usage twice (the second is deduplicated by its identifier), with real idempotency keys.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from billing.catalog.models import Plan, Subscription
from billing.customers.services import customer_create
from billing.payments.meters import meter_usage_report
from billing.payments.models import BillingMode, MeterUsageReport, StripeCustomer, StripeInvoiceSync, SyncState
from billing.payments.services import (
    plan_billing_mode_set,
    stripe_customer_sync,
    stripe_invoice_push,
    stripe_invoice_sync_schedule,
)
from billing.usage.models import HourlyRollup
from ledger.ids import use_namespace

KEY = os.environ.get("STRIPE_TEST_SECRET_KEY", "")
pytestmark = [
    pytest.mark.stripe_live,
    pytest.mark.django_db,
    pytest.mark.skipif(not KEY, reason="STRIPE_TEST_SECRET_KEY is not set (real Stripe test mode: manual pre-release check)"),
]


@pytest.fixture
def live(settings: Any) -> Iterator[None]:
    """Each run is a fresh installation (its own id), as a new test database is: a second run in the same
    Stripe account within 24 hours reuses none of the first one's keys or meter-event identifiers."""
    assert KEY.startswith("sk_test_"), "only a test-mode key"
    settings.STRIPE_SECRET_KEY = KEY
    settings.STRIPE_API_BASE = "https://api.stripe.com"
    settings.STRIPE_METER_EVENTS_BASE = "https://meter-events.stripe.com"
    with use_namespace(f"live{uuid.uuid4().hex[:12]}"):
        yield


def test_customer_invoice_and_meter_usage_against_stripe_test_mode(live, make_invoice, tokens_meter):
    run = uuid.uuid4().hex[:8]  # Stripe keeps test objects and idempotency keys: each run is its own
    customer = customer_create(external_id=f"live-{run}", name=f"Tollgate live check {run}", email="live@tollgate.test")
    assert stripe_customer_sync(customer_pk=customer.pk).state == SyncState.SYNCED
    assert StripeCustomer.objects.get(customer=customer).stripe_customer_id

    invoice = make_invoice(customer, [(9900, "Base fee"), (1234, "LLM tokens"), (-500, "Credit")])
    stripe_invoice_sync_schedule(invoice=invoice)
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row is not None and row.state == SyncState.SYNCED, row and row.last_error
    assert row.stripe_total_minor == invoice.total_minor == 10634
    assert row.stripe_status in ("open", "paid")
    assert stripe_invoice_push(invoice_pk=invoice.pk).stripe_invoice_id == row.stripe_invoice_id  # type: ignore[union-attr]
    assert StripeInvoiceSync.objects.count() == 1

    plan = Plan.objects.create(key=f"live-{run}", name="Live", currency="USD")
    plan_billing_mode_set(plan=plan, mode=BillingMode.STRIPE_METERS)
    now = datetime.now(timezone.utc)
    hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    Subscription.objects.create(customer=customer, plan=plan, start=hour - timedelta(days=1))
    HourlyRollup.objects.create(customer=customer, project_slot=0, meter=tokens_meter, dims_key="d",
                                hour=hour, total=Decimal(1500), events=3)
    tokens_meter.key = f"live_{run}"  # a fresh Stripe meter event name per run
    tokens_meter.save()
    assert meter_usage_report(now=now) == {"marked": 1, "pushed": 1}
    MeterUsageReport.objects.all().delete()  # a re-run from scratch: same identifier, deduplicated by Stripe
    assert meter_usage_report(now=now) == {"marked": 1, "pushed": 1}
