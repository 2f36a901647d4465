"""The sampler's writes (docs/anomalies.md): every tick of the beat (15 s) it reads the spend-watch counter of
each watched customer (one ledger lookup for all), keeps a sample per minute, measures complete hours, and
opens an anomaly when the window's spend is over both bars. The clock is the caller's (``now``)."""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import pairwise

from django.db import IntegrityError, transaction

from billing.audit.services import audit_created
from billing.common.fields import decimal_to_text
from billing.common.queue import task_named
from billing.customers.models import Customer
from billing.guardrails.anomalies import baseline as bl
from billing.guardrails.anomalies.selectors import (
    Watched,
    anomaly_history,
    spend_counters,
    watched_now,
    window_start_sample,
)
from billing.guardrails.anomaly_closing import AUDITED
from billing.guardrails.models import Anomaly, Pause, SpendSample, SpendWatch
from billing.guardrails.pauses import pause_create
from billing.guardrails.signals import anomaly_opened

log = logging.getLogger(__name__)

KEEP_MARGIN = timedelta(minutes=5)
SYSTEM_ACTOR = "system:anomaly-detection"
PAUSE_REASON = "anomaly"


def anomalies_sample(*, now: datetime) -> list[Anomaly]:
    """One tick: sample every watched customer at ``now`` and open what is anomalous. A customer's failure
    is logged and does not stop the others. Returns the anomalies opened by this tick."""
    watched = watched_now(now=now)
    counters = spend_counters(watched=watched)
    opened = []
    for watch in watched:
        try:
            anomaly = watch_observe(watch=watch, spent=counters[(watch.customer_pk, watch.currency)], now=now)
        except Exception:
            log.exception("anomaly detection of customer %s (%s) failed", watch.customer_pk, watch.currency)
            continue
        if anomaly is not None:
            opened.append(anomaly)
    return opened


@transaction.atomic
def watch_observe(*, watch: Watched, spent: Decimal, now: datetime) -> Anomaly | None:
    """Record one sample of the customer's counter and open an anomaly if its window is anomalous. The
    customer's watch row is locked for the tick: concurrent samplers take turns."""
    pk, currency, terms = watch.customer_pk, watch.currency, watch.terms
    SpendSample.objects.bulk_create([SpendSample(customer_id=pk, currency=currency, minute=bl.minute_of(now), at=now,
                                                 spent=spent)], ignore_conflicts=True)
    state = _watch_state(pk, currency, spent, now)
    window = timedelta(minutes=terms.window_minutes)
    _prune(pk, currency, now - 2 * window - KEEP_MARGIN)
    history = anomaly_history(customer_pk=pk, currency=currency, now=now)
    if history.open:
        return None
    start = window_start_sample(customer_pk=pk, currency=currency, start=now - window,
                                not_before=history.last_resolved_at)
    if start is None or start.at >= now:
        return None
    rate = bl.baseline_rate(state.hours, now, history.excluded, history.accepted)
    window_spend = spent - start.spent
    if rate is None or not bl.is_anomalous(window_spend=window_spend, window=now - start.at, baseline=rate,
                                           factor=terms.factor, min_spend=terms.min_spend):
        return None
    return _open(watch, start, now, window_spend, rate)


def _watch_state(customer_pk: int, currency: str, spent: Decimal, now: datetime) -> SpendWatch:
    state = SpendWatch.objects.select_for_update().filter(customer_id=customer_pk, currency=currency).first()
    if state is None:
        SpendWatch.objects.bulk_create([SpendWatch(customer_id=customer_pk, currency=currency, started_at=now,
                                                   hour_at=now, hour_spent=spent, sampled_at=now, spent=spent)],
                                       ignore_conflicts=True)
        return SpendWatch.objects.select_for_update().get(customer_id=customer_pk, currency=currency)
    if now <= state.sampled_at:  # an older tick, late: the watch has seen later already
        return state
    hours, mark = bl.hours_record(list(state.hours), bl.HourMark(state.hour_at, state.hour_spent), now, spent)
    state.hours, state.hour_at, state.hour_spent = hours, mark.at, mark.spent
    state.sampled_at, state.spent = now, spent
    state.save(update_fields=["hours", "hour_at", "hour_spent", "sampled_at", "spent"])
    return state


def _prune(customer_pk: int, currency: str, before: datetime) -> None:
    """Samples older than two windows are not read again (the window's start, the chart's lead)."""
    SpendSample.objects.filter(customer_id=customer_pk, currency=currency, at__lt=before).delete()


def _series(customer_pk: int, currency: str, start: datetime, now: datetime, spent: Decimal) -> list[list[int | str]]:
    """The spend between consecutive samples from ``start`` to this read (the review's chart)."""
    rows = list(SpendSample.objects.filter(customer_id=customer_pk, currency=currency, at__gte=start, at__lt=now)
                .order_by("at").values_list("at", "spent"))
    rows.append((now, spent))
    return [[int(lo.timestamp()), int(hi.timestamp()), decimal_to_text(later - before)]
            for (lo, before), (hi, later) in pairwise(rows)]


def _open(watch: Watched, start: SpendSample, now: datetime, window_spend: Decimal, rate: Decimal) -> Anomaly | None:
    """Record the anomaly (once: its key is the window's first sample; and at most one open per customer and
    currency) and, when the terms say ``pause``, pause the customer."""
    terms = watch.terms
    key = f"{watch.customer_pk}:{watch.currency}:{int(start.at.timestamp() * 1000)}"
    lead = now - start.at
    try:
        with transaction.atomic():
            anomaly = Anomaly.objects.create(
                public_id=f"anom_{secrets.token_hex(8)}", idempotency_key=key, customer_id=watch.customer_pk,
                currency=watch.currency, opened_at=now, window_start=start.at, window_end=now,
                window_spend=window_spend, baseline_rate=rate.quantize(bl.RATE_QUANTUM), factor=terms.factor,
                min_spend=terms.min_spend, window_minutes=terms.window_minutes, action=terms.action,
                series=_series(watch.customer_pk, watch.currency, start.at - lead, now, start.spent + window_spend))
    except IntegrityError:  # another sampler opened it (or another one is open): nothing more to do
        return None
    if terms.action == "pause":  # contract: "a pause with reason `anomaly`" (the figures are on the anomaly)
        anomaly.pause = pause_create(customer=Customer.objects.get(pk=watch.customer_pk), reason=PAUSE_REASON,
                                     source=Pause.Source.ANOMALY, actor=SYSTEM_ACTOR)
        anomaly.save(update_fields=["pause"])
    audit_created(anomaly, action="anomaly.opened", actor=SYSTEM_ACTOR, fields=AUDITED)
    pk = anomaly.pk
    transaction.on_commit(lambda: anomaly_opened.send(sender=Anomaly, anomaly_pk=pk))
    transaction.on_commit(lambda: _queue_emails(pk))
    return anomaly


def _queue_emails(anomaly_pk: int) -> None:
    try:
        task_named("guardrails.anomaly_emails").delay(anomaly_pk)
    except Exception:  # the anomaly is recorded and in the queue; an email lost with the broker is logged
        log.warning("could not queue the emails of anomaly %s", anomaly_pk, exc_info=True)

