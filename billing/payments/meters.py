"""Usage reported to Stripe's Billing Meters (plans in mode stripe_meters): each complete hour of a customer's
metered usage as meter events whose identifiers come from (installation, customer, meter, hour, revision),
corrections as docs/payments.md "Corrections" says, on the sync rows' lease/backoff rules (services.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal, localcontext
from typing import Any

from django.utils import timezone

from billing.catalog.models import Meter, Subscription
from billing.common.fields import decimal_to_text
from billing.payments.gateway import GatewayError, StripeGateway, gateway_get, idempotency_key
from billing.payments.models import BillingMode, MeterUsageReport, PlanBilling, StripeMeter, SyncState
from billing.payments.services import (
    _due,
    _each,
    _lease_take,
    _row_done,
    _row_error,
    _row_save,
    _stripe_customer_id,
    stripe_enabled,
)

log = logging.getLogger(__name__)

METER_LOOKBACK = timedelta(days=34)  # Stripe takes meter events up to 35 days old
METER_VALUE_DIGITS = 15  # Stripe refuses a meter event value of more significant digits
METER_CANCEL_WINDOW = timedelta(hours=23)  # Stripe cancels a meter event within 24 h of receiving it; 1 h margin
REPORTED_AGGREGATIONS = (Meter.Aggregation.SUM, Meter.Aggregation.COUNT)  # hourly totals that add up


def meter_event_identifier(*, installation: str, customer_pk: int, meter_pk: int, hour: datetime, revision: int) -> str:
    """The same (installation, customer, meter, hour, revision) always gives the same identifier, so a
    re-run is deduplicated by Stripe, and another installation's same ids never are (Stripe deduplicates
    identifiers account-wide); revision 0 is the first report, later ones the corrections."""
    base = idempotency_key(customer_pk, meter_pk, f"{hour.astimezone(dt_timezone.utc):%Y%m%d%H}", installation=installation)
    return base if revision == 0 else f"{base}-r{revision}"


def _hour_floor(at: datetime) -> datetime:
    return at.astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)


def meter_usage_collect(*, now: datetime | None = None) -> int:
    """Compare the hourly rollups of customers on stripe_meters plans with what Stripe was told; mark the
    hours that differ (new or corrected) pending. Complete hours only, within Stripe's 35-day window."""
    from billing.usage.models import HourlyRollup

    now = now or timezone.now()
    end = _hour_floor(now)
    floor = end - METER_LOOKBACK
    plans = PlanBilling.objects.filter(mode=BillingMode.STRIPE_METERS).values_list("plan_id", flat=True)
    totals: dict[tuple[int, int, datetime], Decimal] = {}
    customers: set[int] = set()
    for sub in Subscription.objects.filter(plan_id__in=list(plans)).exclude(end__lte=floor).filter(start__lt=end):
        start, stop = max(sub.start, floor), min(sub.end or end, end)
        customers.add(sub.customer_id)
        rows = HourlyRollup.objects.filter(customer_id=sub.customer_id, hour__gte=start, hour__lt=stop,
                                           meter__aggregation__in=REPORTED_AGGREGATIONS)
        for customer_id, meter_id, hour, total in rows.values_list("customer_id", "meter_id", "hour", "total"):
            key = (customer_id, meter_id, hour)
            totals[key] = totals.get(key, Decimal(0)) + Decimal(total)
    marked = 0
    existing = {(r.customer_id, r.meter_id, r.hour): r
                for r in MeterUsageReport.objects.filter(hour__gte=floor, hour__lt=end, customer_id__in=customers)}
    for key, known in existing.items():  # an hour whose usage was corrected away entirely
        if key not in totals and known.total != 0:
            totals[key] = Decimal(0)
    for key, total in totals.items():
        report = existing.get(key)
        if report is None:
            MeterUsageReport.objects.create(customer_id=key[0], meter_id=key[1], hour=key[2], total=total)
            marked += 1
        elif report.total != total:
            _row_save(report, {"total": total, "state": SyncState.PENDING, "next_attempt_at": None})
            marked += 1
    return marked


def _stripe_meter(meter: Meter, gateway: StripeGateway) -> StripeMeter:
    found = StripeMeter.objects.filter(meter=meter).first()
    if found is not None:
        return found
    event_name = f"tollgate_{meter.key}"
    formula = "sum"  # we send hourly totals (a count meter's total is its count), so Stripe adds them up
    stripe_id = gateway.meter_find(event_name=event_name) or gateway.meter_create(
        meter_pk=meter.pk, display_name=meter.name or meter.key, event_name=event_name, formula=formula)
    row, _ = StripeMeter.objects.get_or_create(meter=meter, defaults={"stripe_meter_id": stripe_id, "event_name": event_name})
    return row


def meter_value_pieces(value: Decimal) -> list[Decimal]:
    """``value`` as meter-event values Stripe accepts (at most 15 significant digits each) that add up to it
    exactly: the value truncated to 15 digits, then what truncation left, and so on. An hour whose total
    has 16 or more digits is reported as two or three events of that hour instead of being refused."""
    pieces: list[Decimal] = []
    with localcontext() as ctx:
        ctx.prec = 100  # wider than any stored value: every step below is exact
        rest = value
        while rest != 0:
            sign, digits, exponent = rest.normalize().as_tuple()
            assert isinstance(exponent, int)
            if len(digits) <= METER_VALUE_DIGITS:
                pieces.append(rest)
                break
            head = Decimal((sign, digits[:METER_VALUE_DIGITS], exponent + len(digits) - METER_VALUE_DIGITS))
            pieces.append(head)
            rest -= head
    return pieces


def _cancellable(live: list[list[Any]], now: datetime) -> bool:
    """Every live event was sent recently enough for Stripe to cancel it (an entry without its sending time
    predates this rule: treated as too old)."""
    return all(len(entry) > 2 and now.timestamp() - float(entry[2]) < METER_CANCEL_WINDOW.total_seconds()
               for entry in live)


def _meter_hour_recover(report: MeterUsageReport, *, meter: StripeMeter, gateway: StripeGateway,
                        stripe_customer_id: str, now: datetime) -> None:
    """Before the first report of an hour, ask Stripe what it already counts for it. Something there means
    our record of it was lost (a restore from an older backup): the row adopts Stripe's figure, and its
    revisions go on from a number never used before (the minute of the recovery), so no identifier is sent
    again with another value. Those events' identifiers are unknown, so a decrease is a negative event."""
    held = gateway.meter_hour_total(stripe_meter_id=meter.stripe_meter_id, stripe_customer_id=stripe_customer_id,
                                    hour_start=int(report.hour.timestamp()))
    if held != 0:
        log.warning("payments: Stripe already counts %s for %s; adopted (our record of it was lost)", held, report)
        _row_save(report, {"reported_total": held, "revision": int(now.timestamp()) // 60})


def meter_usage_push(*, report_pk: int, now: datetime | None = None) -> MeterUsageReport:
    """Make Stripe's figure for the hour equal ``total`` (docs/payments.md "Corrections"): an increase is one
    more event for the difference; a decrease cancels the hour's events (meter event adjustments) and reports
    the corrected total while Stripe can still cancel them all, and is one negative event for the difference
    once it cannot. Each figure goes as events of at most 15 significant digits."""
    now = now or timezone.now()
    report = MeterUsageReport.objects.select_related("meter").get(pk=report_pk)
    if report.state == SyncState.SYNCED or not _lease_take(report, now=now):
        return report
    try:
        gateway = gateway_get()
        meter = _stripe_meter(report.meter, gateway)
        customer_id = _stripe_customer_id(customer_pk=report.customer_id, gateway=gateway, now=now)
        live: list[list[Any]] = [list(entry) for entry in report.live_identifiers]
        if report.revision == 0 and not live:
            _meter_hour_recover(report, meter=meter, gateway=gateway, stripe_customer_id=customer_id, now=now)
        if report.total < report.reported_total and _cancellable(live, now):
            while live:
                gateway.meter_event_cancel(event_name=meter.event_name, identifier=live[0][0])
                live.pop(0)
                _row_save(report, {"live_identifiers": live,
                                   "reported_total": sum((Decimal(entry[1]) for entry in live), Decimal(0))})
        for piece in meter_value_pieces(report.total - report.reported_total):
            identifier = meter_event_identifier(installation=gateway.installation, customer_pk=report.customer_id,
                                                meter_pk=report.meter_id, hour=report.hour, revision=report.revision)
            gateway.meter_event_create(event_name=meter.event_name, identifier=identifier, stripe_customer_id=customer_id,
                                       value=piece, timestamp=int(report.hour.timestamp()))
            live.append([identifier, decimal_to_text(piece), int(now.timestamp())])
            _row_save(report, {"live_identifiers": live, "reported_total": report.reported_total + piece,
                               "revision": report.revision + 1})
    except GatewayError as exc:
        return _row_error(report, exc, now=now)
    current = MeterUsageReport.objects.filter(pk=report.pk).values_list("total", flat=True).first()
    if current is not None and Decimal(current) != report.reported_total:
        # corrected again while we pushed: due again, now (total is the collector's, not ours to write)
        return _row_save(report, {"state": SyncState.PENDING, "next_attempt_at": None, "leased_until": None})
    return _row_done(report, now=now)


def report_pusher(now: datetime) -> Callable[[int], bool]:
    return lambda pk: meter_usage_push(report_pk=pk, now=now).state == SyncState.SYNCED


def meter_usage_report(*, now: datetime | None = None) -> dict[str, int]:
    now = now or timezone.now()
    marked = meter_usage_collect(now=now)
    pushed = 0
    if stripe_enabled():
        pushed = _each("meter usage push, report", _due(MeterUsageReport, now, 1000), report_pusher(now))
    return {"marked": marked, "pushed": pushed}
