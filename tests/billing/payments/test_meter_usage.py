"""Mode stripe_meters: hourly rollups reported as Billing Meter events whose identifier comes from
(customer, meter, hour), so a re-run never reports twice; corrections as documented in docs/payments.md.
Meters and meter events are answered by the recording client from Stripe's example objects."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from billing.catalog.models import Meter, Plan, Subscription
from billing.catalog.services import meter_create
from billing.payments.meters import meter_usage_report
from billing.payments.models import BillingMode, MeterUsageReport, StripeCustomer, StripeMeter, SyncState
from billing.payments.services import plan_billing_mode_set
from billing.payments.sweep import stripe_sync_pending
from billing.usage.models import HourlyRollup
from tests.billing.payments.conftest import after_backoff

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 10, 12, 25, tzinfo=timezone.utc)
H9, H10, H11, H12 = (datetime(2026, 3, 10, h, tzinfo=timezone.utc) for h in (9, 10, 11, 12))


@pytest.fixture
def metered(acme, tokens_meter):
    plan = Plan.objects.create(key="metered", name="Metered", currency="USD")
    plan_billing_mode_set(plan=plan, mode=BillingMode.STRIPE_METERS)
    Subscription.objects.create(customer=acme, plan=plan, start=datetime(2026, 3, 1, tzinfo=timezone.utc))
    return plan


def rollup(customer, meter, hour, total, dims="d0"):
    row, _ = HourlyRollup.objects.update_or_create(
        customer=customer, project_slot=0, meter=meter, dims_key=dims, hour=hour,
        defaults={"total": Decimal(total), "events": 1})
    return row


def meter_events(stripe_on):
    return [(r.form["identifier"], r.form["payload[value]"], r.form["timestamp"], r.idempotency_key)
            for r in stripe_on.calls("post", "/v1/billing/meter_events")]


def ident(acme, meter, hour, revision=0):
    base = f"tg-inst-a-{acme.pk}-{meter.pk}-{hour:%Y%m%d%H}"
    return base if revision == 0 else f"{base}-r{revision}"


def test_complete_hours_are_reported_once_with_identifiers_from_customer_meter_and_hour(stripe_on, metered, acme,
                                                                                       tokens_meter):
    # given two dimension sets in hour 10, one in hour 11, and the hour in progress (12)
    rollup(acme, tokens_meter, H10, "1000", "gpt")
    rollup(acme, tokens_meter, H10, "500", "claude")
    rollup(acme, tokens_meter, H11, "42.5")
    rollup(acme, tokens_meter, H12, "7")
    # when
    assert meter_usage_report(now=NOW) == {"marked": 2, "pushed": 2}
    # then the meter was created once, then one event per complete hour with the hour's total
    [meter_call] = stripe_on.calls("post", "/v1/billing/meters")
    assert meter_call.idempotency_key == f"tg-inst-a-meter-{tokens_meter.pk}"
    assert meter_call.form == {"display_name": "LLM tokens", "event_name": "tollgate_llm_tokens",
                               "default_aggregation[formula]": "sum", "customer_mapping[type]": "by_id",
                               "customer_mapping[event_payload_key]": "stripe_customer_id",
                               "value_settings[event_payload_key]": "value"}
    assert StripeMeter.objects.get(meter=tokens_meter).event_name == "tollgate_llm_tokens"
    stripe_customer_id = StripeCustomer.objects.get(customer=acme).stripe_customer_id
    calls = stripe_on.calls("post", "/v1/billing/meter_events")
    assert [c.form["payload[stripe_customer_id]"] for c in calls] == [stripe_customer_id] * 2
    assert {c.form["event_name"] for c in calls} == {"tollgate_llm_tokens"}
    assert meter_events(stripe_on) == [
        (ident(acme, tokens_meter, H10), "1500", str(int(H10.timestamp())), ident(acme, tokens_meter, H10)),
        (ident(acme, tokens_meter, H11), "42.5", str(int(H11.timestamp())), ident(acme, tokens_meter, H11)),
    ]
    assert set(MeterUsageReport.objects.values_list("state", flat=True)) == {SyncState.SYNCED}


def test_a_rerun_reports_nothing_new_and_a_rerun_from_scratch_carries_the_same_identifiers(stripe_on, metered, acme,
                                                                                          tokens_meter):
    rollup(acme, tokens_meter, H10, "1000")
    meter_usage_report(now=NOW)
    first = meter_events(stripe_on)
    # a re-run: nothing changed, nothing sent
    assert meter_usage_report(now=NOW + timedelta(minutes=10)) == {"marked": 0, "pushed": 0}
    assert meter_events(stripe_on) == first
    # a re-run that lost our records (a restore, a crash before the commit) asks Stripe first: it already
    # counts the hour, so nothing is sent again
    MeterUsageReport.objects.all().delete()
    stripe_on.requests.clear()
    meter_usage_report(now=NOW)
    assert meter_events(stripe_on) == []
    assert len(stripe_on.calls("get", r"/v1/billing/meters/[^/]+/event_summaries")) == 1
    assert MeterUsageReport.objects.get().reported_total == Decimal(1000)
    # a crash after Stripe took the event but before its row was saved, summary not yet up to date: the
    # same identifier and idempotency key, which Stripe deduplicates
    MeterUsageReport.objects.all().delete()
    stripe_on.unsummarized.add(ident(acme, tokens_meter, H10))
    meter_usage_report(now=NOW)
    assert meter_events(stripe_on) == first


def _lose_records_after_a_correction(stripe_on, acme, tokens_meter):
    rollup(acme, tokens_meter, H10, "1000")
    meter_usage_report(now=NOW)
    rollup(acme, tokens_meter, H10, "1250")
    meter_usage_report(now=NOW + timedelta(minutes=10))
    MeterUsageReport.objects.all().delete()  # a restore from a backup older than both reports
    stripe_on.requests.clear()


def test_after_a_correction_a_rerun_that_lost_our_records_adopts_what_stripe_counts(stripe_on, metered, acme,
                                                                                   tokens_meter):
    _lose_records_after_a_correction(stripe_on, acme, tokens_meter)
    assert meter_usage_report(now=NOW + timedelta(minutes=20)) == {"marked": 1, "pushed": 1}
    assert meter_events(stripe_on) == []  # revision 0 with 1250 would be refused: its key was used with 1000
    report = MeterUsageReport.objects.get()
    assert (report.state, report.reported_total) == (SyncState.SYNCED, Decimal(1250))
    assert stripe_on.meter_total("tollgate_llm_tokens", StripeCustomer.objects.get().stripe_customer_id) == 1250


def test_a_decrease_after_lost_records_is_a_negative_event_with_an_identifier_never_used(stripe_on, metered, acme,
                                                                                       tokens_meter):
    _lose_records_after_a_correction(stripe_on, acme, tokens_meter)
    rollup(acme, tokens_meter, H10, "900")
    later = NOW + timedelta(minutes=20)
    meter_usage_report(now=later)
    revision = int(later.timestamp()) // 60
    assert meter_events(stripe_on) == [(ident(acme, tokens_meter, H10, revision), "-350", str(int(H10.timestamp())),
                                        ident(acme, tokens_meter, H10, revision))]
    assert stripe_on.calls("post", "/v1/billing/meter_event_adjustments") == []  # their identifiers are unknown
    assert stripe_on.meter_total("tollgate_llm_tokens", StripeCustomer.objects.get().stripe_customer_id) == 900


def test_a_late_increase_is_reported_as_one_more_event_for_the_difference(stripe_on, metered, acme, tokens_meter):
    rollup(acme, tokens_meter, H10, "1000")
    meter_usage_report(now=NOW)
    rollup(acme, tokens_meter, H10, "1250")  # late events rolled up into the same hour
    stripe_on.requests.clear()
    assert meter_usage_report(now=NOW + timedelta(hours=1)) == {"marked": 1, "pushed": 1}
    assert meter_events(stripe_on) == [(ident(acme, tokens_meter, H10, 1), "250", str(int(H10.timestamp())),
                                        ident(acme, tokens_meter, H10, 1))]
    report = MeterUsageReport.objects.get()
    assert (report.reported_total, report.revision) == (Decimal(1250), 2)


def test_a_decrease_cancels_the_hours_events_and_reports_the_corrected_total(stripe_on, metered, acme, tokens_meter):
    rollup(acme, tokens_meter, H10, "1000")
    meter_usage_report(now=NOW)
    rollup(acme, tokens_meter, H10, "1250")
    meter_usage_report(now=NOW)
    rollup(acme, tokens_meter, H10, "900")  # a correction event with a negative quantity
    stripe_on.requests.clear()
    meter_usage_report(now=NOW)
    cancels = stripe_on.calls("post", "/v1/billing/meter_event_adjustments")
    assert [(c.form, c.idempotency_key) for c in cancels] == [
        ({"event_name": "tollgate_llm_tokens", "type": "cancel", "cancel[identifier]": i}, f"{i}-cancel")
        for i in (ident(acme, tokens_meter, H10), ident(acme, tokens_meter, H10, 1))]
    assert meter_events(stripe_on) == [(ident(acme, tokens_meter, H10, 2), "900", str(int(H10.timestamp())),
                                        ident(acme, tokens_meter, H10, 2))]
    report = MeterUsageReport.objects.get()
    # each live event with the moment it was sent (what decides whether Stripe can still cancel it)
    assert report.live_identifiers == [[ident(acme, tokens_meter, H10, 2), "900", int(NOW.timestamp())]]
    assert report.reported_total == Decimal(900)


def test_only_meters_whose_hourly_totals_add_up_are_reported(stripe_on, metered, acme, calls_meter):
    peak = meter_create(key="peak", name="Peak", unit="x", aggregation=Meter.Aggregation.MAX)[0]
    rollup(acme, calls_meter, H10, "3")
    rollup(acme, peak, H10, "99")
    meter_usage_report(now=NOW)
    assert [e[0] for e in meter_events(stripe_on)] == [ident(acme, calls_meter, H10)]


def test_customers_of_plans_billed_with_tollgate_invoices_are_not_reported(stripe_on, metered, acme, globex,
                                                                         tokens_meter):
    Subscription.objects.create(customer=globex, plan=Plan.objects.create(key="inv", name="Inv", currency="USD"),
                                start=datetime(2026, 3, 1, tzinfo=timezone.utc))
    rollup(globex, tokens_meter, H10, "5")
    rollup(acme, tokens_meter, H9, "6")
    meter_usage_report(now=NOW)
    assert [e[0] for e in meter_events(stripe_on)] == [ident(acme, tokens_meter, H9)]


def test_an_outage_leaves_the_hour_pending_and_the_sweep_reports_it_once(stripe_on, metered, acme, tokens_meter):
    rollup(acme, tokens_meter, H10, "1000")
    stripe_on.down = True
    assert meter_usage_report(now=NOW) == {"marked": 1, "pushed": 0}
    report = MeterUsageReport.objects.get()
    assert report.state == SyncState.PENDING and "down" in report.last_error
    stripe_on.down = False
    retried_at = after_backoff(report)
    stripe_sync_pending(now=retried_at)
    report.refresh_from_db()
    assert report.state == SyncState.SYNCED
    sent = [e for e in meter_events(stripe_on)]
    # the failed attempt and the retry carry the same identifier; Stripe counts it once
    assert {e[0] for e in sent} == {ident(acme, tokens_meter, H10)}
    assert report.live_identifiers == [[ident(acme, tokens_meter, H10), "1000", int(retried_at.timestamp())]]


def test_an_hour_corrected_to_nothing_cancels_what_was_reported(stripe_on, metered, acme, tokens_meter):
    row = rollup(acme, tokens_meter, H10, "1000")
    meter_usage_report(now=NOW)
    row.delete()
    stripe_on.requests.clear()
    meter_usage_report(now=NOW)
    assert [c.form["cancel[identifier]"] for c in stripe_on.calls("post", "/v1/billing/meter_event_adjustments")] == [
        ident(acme, tokens_meter, H10)]
    assert meter_events(stripe_on) == []
    report = MeterUsageReport.objects.get()
    assert (report.state, report.reported_total, report.live_identifiers) == (SyncState.SYNCED, Decimal(0), [])


def test_a_correction_collected_while_the_hour_was_being_pushed_is_not_lost(stripe_on, metered, acme, tokens_meter,
                                                                           monkeypatch):
    from billing.payments.gateway import StripeGateway

    rollup(acme, tokens_meter, H10, "1000")
    real_send = StripeGateway.meter_event_create

    def send_then_correct(self, **kwargs):
        real_send(self, **kwargs)
        rollup(acme, tokens_meter, H10, "1100")  # late events, collected by another run meanwhile
        MeterUsageReport.objects.filter(hour=H10).update(total=Decimal(1100))

    with monkeypatch.context() as patch:
        patch.setattr(StripeGateway, "meter_event_create", send_then_correct)
        meter_usage_report(now=NOW)
        report = MeterUsageReport.objects.get()
        assert (report.state, report.reported_total, report.next_attempt_at) == (SyncState.PENDING, Decimal(1000), None)
    stripe_sync_pending(now=NOW)
    report.refresh_from_db()
    assert (report.state, report.reported_total) == (SyncState.SYNCED, Decimal(1100))
    assert [e[:2] for e in meter_events(stripe_on)] == [(ident(acme, tokens_meter, H10), "1000"),
                                                        (ident(acme, tokens_meter, H10, 1), "100")]
