"""Two installations (a staging and a production, or a database rebuilt from scratch) pushing to one Stripe
account: every idempotency key, meter-event identifier and metadata tag carries the installation's id, so
the second one's pushes never replay or drop the first one's. The recording client refuses a key reused
with other parameters and counts a repeated meter-event identifier once, as Stripe does."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from billing.catalog.models import Plan, Subscription
from billing.payments.meters import meter_usage_report
from billing.payments.models import (
    BillingMode,
    MeterUsageReport,
    StripeCustomer,
    StripeInvoiceItem,
    StripeInvoiceSync,
    StripeMeter,
    SyncState,
)
from billing.payments.services import plan_billing_mode_set, stripe_invoice_push, stripe_invoice_sync_schedule
from billing.usage.models import HourlyRollup
from ledger.ids import use_namespace

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 10, 12, 25, tzinfo=timezone.utc)
H10 = datetime(2026, 3, 10, 10, tzinfo=timezone.utc)
LINES = [(9900, "Base fee"), (1234, "LLM tokens")]


@pytest.fixture
def metered(acme):
    plan = Plan.objects.create(key="metered", name="Metered", currency="USD")
    plan_billing_mode_set(plan=plan, mode=BillingMode.STRIPE_METERS)
    Subscription.objects.create(customer=acme, plan=plan, start=datetime(2026, 3, 1, tzinfo=timezone.utc))
    return plan


def push_all(invoice, meter, usage: str) -> tuple[StripeInvoiceSync, MeterUsageReport, str]:
    """What an installation does with the same local rows: push the invoice, report the hour's usage."""
    HourlyRollup.objects.update_or_create(customer=invoice.customer, project_slot=0, meter=meter, dims_key="d", hour=H10,
                                          defaults={"total": Decimal(usage), "events": 1})
    stripe_invoice_sync_schedule(invoice=invoice)
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row is not None
    meter_usage_report(now=NOW)
    customer_id = StripeCustomer.objects.get(customer=invoice.customer).stripe_customer_id
    assert customer_id
    return row, MeterUsageReport.objects.get(), customer_id


def forget_payments_rows() -> None:
    """A fresh database on the same Stripe account: the same local ids, none of the Stripe records."""
    StripeInvoiceItem.objects.all().delete()
    StripeInvoiceSync.objects.all().delete()
    MeterUsageReport.objects.all().delete()
    StripeMeter.objects.all().delete()
    StripeCustomer.objects.all().delete()


def keys_sent(stripe_on) -> set[str]:
    return {r.idempotency_key for r in stripe_on.requests if r.idempotency_key}


def test_two_installations_on_one_stripe_account_never_collide(stripe_on, localstripe, acme, metered, tokens_meter,
                                                               make_invoice):
    invoice = make_invoice(acme, LINES)
    with use_namespace("prod"):
        row_a, report_a, customer_a = push_all(invoice, tokens_meter, "1000")
    keys_a = keys_sent(stripe_on)
    stripe_on.requests.clear()
    forget_payments_rows()
    with use_namespace("staging"):
        row_b, report_b, customer_b = push_all(invoice, tokens_meter, "400")
    keys_b = keys_sent(stripe_on)
    # both pushed everything, each to its own Stripe objects
    assert (row_a.state, row_b.state, report_a.state, report_b.state) == (SyncState.SYNCED,) * 4, (
        row_b.last_error, report_b.last_error)
    assert customer_a != customer_b
    assert row_a.stripe_invoice_id != row_b.stripe_invoice_id
    invoices = {inv.id: inv for inv in localstripe.objects("invoice")}
    assert invoices[row_a.stripe_invoice_id].total == invoices[row_b.stripe_invoice_id].total == 11134
    assert invoices[row_a.stripe_invoice_id].metadata["tollgate_installation"] == "prod"
    assert invoices[row_b.stripe_invoice_id].metadata["tollgate_installation"] == "staging"
    assert {c.metadata["tollgate_installation"] for c in localstripe.objects("customer")} == {"prod", "staging"}
    # no key and no meter-event identifier in common; every one carries its installation
    assert not keys_a & keys_b
    assert all(k.startswith("tg-prod-") for k in keys_a) and all(k.startswith("tg-staging-") for k in keys_b)
    assert report_a.live_identifiers[0][0].startswith("tg-prod-")
    assert report_b.live_identifiers[0][0].startswith("tg-staging-")
    # one Stripe meter for the event name (the second installation found it), each usage counted
    assert len(stripe_on.rules.meters) == 1
    assert stripe_on.calls("post", "/v1/billing/meters") == []
    assert stripe_on.meter_total("tollgate_llm_tokens", customer_a) == Decimal(1000)
    assert stripe_on.meter_total("tollgate_llm_tokens", customer_b) == Decimal(400)


def test_without_installation_ids_the_second_installation_would_collide(stripe_on, localstripe, acme, metered,
                                                                       tokens_meter, make_invoice):
    """The control: what the recording account does to bare ids, which is what real Stripe would do."""
    invoice = make_invoice(acme, LINES)
    with use_namespace(""):
        row_a, _, customer_a = push_all(invoice, tokens_meter, "1000")
        forget_payments_rows()
        row_b, report_b, customer_b = push_all(invoice, tokens_meter, "400")
    assert customer_b == customer_a  # Stripe replayed the first installation's customer
    assert row_b.stripe_invoice_id == row_a.stripe_invoice_id  # and its invoice
    # and the second takes the first one's hour for its own lost record: the first installation's usage
    # is replaced by the second's, and Stripe bills the shared customer 400 instead of 1,400
    assert report_b.state == SyncState.SYNCED, report_b.last_error
    assert stripe_on.meter_total("tollgate_llm_tokens", customer_a) == Decimal(400)


def test_the_setting_overrides_the_installation_id(stripe_on, localstripe, acme, settings):
    from billing.payments.services import stripe_customer_sync

    settings.STRIPE_INSTALLATION_ID = "eu-1"
    stripe_customer_sync(customer_pk=acme.pk)
    [call] = stripe_on.calls("post", "/v1/customers")
    assert call.idempotency_key == f"tg-eu-1-customer-{acme.pk}"
    assert call.form["metadata[tollgate_installation]"] == "eu-1"
