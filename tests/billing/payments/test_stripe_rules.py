"""Stripe's rules, enforced by the recording Stripe account so that breaking one fails here as it would in
production: an idempotency key reused with other parameters, a meter value of more than 15 significant
digits, a meter-event cancellation more than 24 hours after Stripe received the event. And what Tollgate
does within them: values split into events Stripe accepts, late corrections as negative events, existing
meters found by their event name."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from billing.catalog.models import Plan, Subscription
from billing.payments.gateway import GatewayError, gateway_get
from billing.payments.meters import meter_usage_report, meter_value_pieces
from billing.payments.models import BillingMode, MeterUsageReport, StripeCustomer, StripeMeter, SyncState
from billing.payments.services import plan_billing_mode_set
from billing.usage.models import HourlyRollup
from tests.billing.payments.stripe_doubles import significant_digits

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 10, 12, 25, tzinfo=timezone.utc)
H10 = datetime(2026, 3, 10, 10, tzinfo=timezone.utc)


@pytest.fixture
def metered(acme):
    plan = Plan.objects.create(key="metered", name="Metered", currency="USD")
    plan_billing_mode_set(plan=plan, mode=BillingMode.STRIPE_METERS)
    Subscription.objects.create(customer=acme, plan=plan, start=datetime(2026, 3, 1, tzinfo=timezone.utc))
    return plan


def rollup(customer, meter, hour, total):
    HourlyRollup.objects.update_or_create(customer=customer, project_slot=0, meter=meter, dims_key="d", hour=hour,
                                          defaults={"total": Decimal(total), "events": 1})


def stripe_total(stripe_on, customer) -> Decimal:
    return stripe_on.meter_total("tollgate_llm_tokens", StripeCustomer.objects.get(customer=customer).stripe_customer_id)


# --- the recording account refuses what Stripe refuses ---------------------------------------------------
def test_a_key_reused_with_other_parameters_is_refused_and_with_the_same_ones_replayed(stripe_on, acme):
    gateway = gateway_get()
    first = gateway.customer_create(customer_pk=acme.pk, external_id="acme-co", name="Acme", email="")
    assert gateway.customer_create(customer_pk=acme.pk, external_id="acme-co", name="Acme", email="") == first
    with pytest.raises(GatewayError) as refused:
        gateway.customer_create(customer_pk=acme.pk, external_id="acme-co", name="Acme Corp", email="")
    assert not refused.value.retryable
    assert "same parameters" in str(refused.value)


def test_a_meter_value_of_more_than_15_significant_digits_is_refused(stripe_on):
    gateway = gateway_get()

    def send(identifier: str, value: str) -> None:
        gateway.meter_event_create(event_name="tollgate_llm_tokens", identifier=identifier, stripe_customer_id="cus_1",
                                   value=Decimal(value), timestamp=int(H10.timestamp()))

    send("e15", "123456789012345")
    send("e15b", "0.000123456789012345")
    with pytest.raises(GatewayError) as refused:
        send("e16", "1234567890123456")
    assert "15 significant digits" in str(refused.value) and not refused.value.retryable
    assert stripe_on.meter_total("tollgate_llm_tokens", "cus_1") == Decimal("123456789012345.000123456789012345")


def test_a_meter_event_is_cancelled_within_24_hours_of_its_receipt_and_not_after(stripe_on):
    gateway = gateway_get()
    stripe_on.clock = NOW
    for identifier in ("a", "b"):
        gateway.meter_event_create(event_name="tollgate_llm_tokens", identifier=identifier, stripe_customer_id="cus_1",
                                   value=Decimal(5), timestamp=int(H10.timestamp()))
    stripe_on.clock = NOW + timedelta(hours=23, minutes=59)
    gateway.meter_event_cancel(event_name="tollgate_llm_tokens", identifier="a")
    stripe_on.clock = NOW + timedelta(hours=24, minutes=1)
    with pytest.raises(GatewayError) as refused:
        gateway.meter_event_cancel(event_name="tollgate_llm_tokens", identifier="b")
    assert "within 24 hours" in str(refused.value)
    assert stripe_on.meter_total("tollgate_llm_tokens", "cus_1") == Decimal(5)


# --- what Tollgate sends within the rules ---------------------------------------------------------------
@pytest.mark.parametrize("value", ["1234567890123456", "12345678901234567890.123456789012345678", "0.1", "-98765432109876543"])
def test_values_are_split_into_pieces_stripe_accepts_that_add_up_exactly(value):
    pieces = meter_value_pieces(Decimal(value))
    assert sum(pieces, Decimal(0)) == Decimal(value)
    assert all(significant_digits(str(piece)) <= 15 for piece in pieces)
    assert len(pieces) == -(-significant_digits(value) // 15)


def test_a_16_digit_hour_reaches_stripes_total_exactly(stripe_on, metered, acme, tokens_meter):
    stripe_on.clock = NOW
    rollup(acme, tokens_meter, H10, "1234567890123456.5")
    assert meter_usage_report(now=NOW) == {"marked": 1, "pushed": 1}
    report = MeterUsageReport.objects.get()
    assert report.state == SyncState.SYNCED, report.last_error
    values = [r.form["payload[value]"] for r in stripe_on.calls("post", "/v1/billing/meter_events")]
    assert values == ["1234567890123450", "6.5"]  # the hour's two events, both at the hour
    assert stripe_total(stripe_on, acme) == Decimal("1234567890123456.5") == report.reported_total


def test_a_3_day_old_decrease_is_one_negative_event_and_reaches_stripes_total_exactly(stripe_on, metered, acme,
                                                                                     tokens_meter):
    stripe_on.clock = NOW
    rollup(acme, tokens_meter, H10, "1000")
    meter_usage_report(now=NOW)
    later = NOW + timedelta(days=3)
    stripe_on.clock = later
    rollup(acme, tokens_meter, H10, "700.25")  # a signed correction, three days on
    stripe_on.requests.clear()
    assert meter_usage_report(now=later) == {"marked": 1, "pushed": 1}
    report = MeterUsageReport.objects.get()
    assert report.state == SyncState.SYNCED, report.last_error
    assert stripe_on.calls("post", "/v1/billing/meter_event_adjustments") == []  # Stripe could no longer cancel
    [event] = stripe_on.calls("post", "/v1/billing/meter_events")
    assert (event.form["identifier"], event.form["payload[value]"], event.form["timestamp"]) == (
        f"tg-inst-a-{acme.pk}-{tokens_meter.pk}-2026031010-r1", "-299.75", str(int(H10.timestamp())))
    assert stripe_total(stripe_on, acme) == Decimal("700.25") == report.reported_total
    # and a later increase still adds the difference
    rollup(acme, tokens_meter, H10, "800")
    meter_usage_report(now=later)
    assert stripe_total(stripe_on, acme) == Decimal(800)


def test_a_decrease_within_24_hours_still_cancels(stripe_on, metered, acme, tokens_meter):
    stripe_on.clock = NOW
    rollup(acme, tokens_meter, H10, "1000")
    meter_usage_report(now=NOW)
    stripe_on.clock = NOW + timedelta(hours=20)
    rollup(acme, tokens_meter, H10, "10")
    meter_usage_report(now=NOW + timedelta(hours=20))
    assert len(stripe_on.calls("post", "/v1/billing/meter_event_adjustments")) == 1
    assert stripe_total(stripe_on, acme) == Decimal(10)
    assert [e[1] for e in MeterUsageReport.objects.get().live_identifiers] == ["10"]


def test_an_existing_meter_is_found_by_its_event_name(stripe_on, metered, acme, tokens_meter):
    existing = gateway_get().meter_create(meter_pk=999, display_name="made in Stripe", event_name="tollgate_llm_tokens",
                                          formula="sum")
    stripe_on.requests.clear()
    rollup(acme, tokens_meter, H10, "5")
    meter_usage_report(now=NOW)
    assert stripe_on.calls("post", "/v1/billing/meters") == []
    assert StripeMeter.objects.get(meter=tokens_meter).stripe_meter_id == existing
    assert stripe_total(stripe_on, acme) == Decimal(5)


def test_an_unknown_parameter_is_refused_as_stripe_refuses_it(stripe_on):
    from tests.billing.payments.stripe_doubles import unknown_parameters

    assert unknown_parameters("post", "/v1/invoices", {"customer": "cus_1", "metadata[a]": "b", "collection": "x"}) == [
        "collection"]
    import stripe

    gateway = gateway_get()
    with pytest.raises(stripe.InvalidRequestError) as refused:
        # a call outside the gateway's typed methods, as a careless change would make it
        gateway._client.v1.customers.create({"name": "Acme", "nmae": "typo"})  # type: ignore[arg-type]
    assert refused.value.http_status == 400 and "Received unknown parameter: nmae" in str(refused.value)
