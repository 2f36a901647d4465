"""Soft-limit alerts: thresholds (writes), crossing detection and the one email per threshold, customer
and period (docs/api.md, "Soft-limit alerts"; docs/operations.md, "Alert emails").

Detection runs in a Celery task shortly after ingest (``alerts_check_soon``: at most one check queued per
customer at a time, so the hot path pays one cache ``add``) and in a beat sweep as the safety net. The
ledger figures (``selectors.limit_figures``) decide; each crossed threshold becomes an ``Alert`` row
through ``INSERT ... ON CONFLICT DO NOTHING`` on (customer, period_start, target, percent).

Never twice: a worker sends an alert's email only after it changed the row from ``pending`` to
``sending`` with one conditional UPDATE (committed before the send), so of any number of retries and
concurrent workers exactly one owns it. The send is therefore at most once: a crash after the SMTP
server took the message but before ``sent`` is recorded leaves the row ``sending`` (the sweep marks it
``unknown`` after ``STALE_AFTER``), and it is never sent again on its own. A send refused before the
server took the message (connection refused, sender/recipients/data refused) goes back to ``pending``
and is retried with backoff: nothing was delivered, so a retry cannot duplicate it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.mail import EmailMessage
from django.db import IntegrityError, transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.utils import timezone

from billing.audit.services import audit_created, audit_deleted, snapshot
from billing.catalog.models import Meter, Plan, Subscription
from billing.common import process_caches
from billing.common.calendar import period_bounds
from billing.common.degraded import degraded, soft
from billing.common.errors import CommonCode, DomainError, validation_error
from billing.common.fields import decimal_to_text
from billing.common.mail import RETRY, UNKNOWN, deliver_once
from billing.common.queue import task_named
from billing.customers.models import Customer
from billing.guardrails import selectors
from billing.guardrails.models import Alert, AlertThreshold
from billing.guardrails.signals import soft_limit_crossed

log = logging.getLogger(__name__)

MAX_THRESHOLDS_PER_CUSTOMER = 20
CHECK_DELAY_SECONDS = 5  # the check runs this long after the first event that queued it: one check per burst
MARK_TTL_SECONDS = 300  # a lost task (broker hiccup) blocks the after-ingest check this long at most; the sweep covers it
LATE_SEND_WINDOW = timedelta(days=1)  # a pending alert of a period that ended longer ago is not sent any more
STALE_AFTER = timedelta(minutes=10)  # a claim older than this without "sent" is reported as unknown


class AlertSendDeferred(Exception):
    """An alert email could not be handed to the mail server (nothing was sent); it stays pending."""


# --- thresholds ---------------------------------------------------------------------------------------

def alert_threshold_validate(*, target: str, percent: Decimal) -> tuple[str, Decimal]:
    """The target and the canonical percent, or 422 by field."""
    errors: dict[str, list[str]] = {}
    if target != AlertThreshold.SPEND_CAP:
        key = target.removeprefix(AlertThreshold.METER_PREFIX)
        if not target.startswith(AlertThreshold.METER_PREFIX) or not Meter.objects.filter(key=key).exists():
            errors["target"] = [f"Use \"{AlertThreshold.SPEND_CAP}\" or \"meter:<key>\" of an existing meter."]
    if not (percent.is_finite() and Decimal(0) < percent <= 100 and percent == percent.quantize(Decimal("0.01"))):
        errors["percent"] = ["A percentage above 0 and at most 100, with at most 2 decimal places."]
    if errors:
        raise validation_error(errors)
    return target, Decimal(decimal_to_text(percent))


def alert_threshold_create(*, customer: Customer, target: str, percent: Decimal) -> tuple[AlertThreshold, bool]:
    """A customer's own threshold; the same (target, percent) again returns the existing one (False)."""
    target, percent = alert_threshold_validate(target=target, percent=percent)
    existing = AlertThreshold.objects.filter(customer=customer, target=target, percent=percent).first()
    if existing is not None:
        return existing, False
    if AlertThreshold.objects.filter(customer=customer).count() >= MAX_THRESHOLDS_PER_CUSTOMER:
        raise validation_error({"percent": [f"At most {MAX_THRESHOLDS_PER_CUSTOMER} thresholds per customer."]})
    try:
        with transaction.atomic():
            threshold = AlertThreshold.objects.create(customer=customer, target=target, percent=percent)
            audit_created(threshold)
            return threshold, True
    except IntegrityError:  # the same threshold created concurrently
        return AlertThreshold.objects.get(customer=customer, target=target, percent=percent), False


def alert_threshold_delete(*, customer: Customer, threshold_id: int | None = None, target: str | None = None,
                           percent: Decimal | None = None) -> None:
    """Delete one of the customer's own thresholds (by id, or by target and percent). Plan thresholds and
    the default are the operator's: 404 here. Alerts already recorded stay."""
    qs = AlertThreshold.objects.filter(customer=customer)
    if threshold_id is not None:
        qs = qs.filter(pk=threshold_id)
    elif target is not None and percent is not None and percent.is_finite():
        qs = qs.filter(target=target, percent=Decimal(decimal_to_text(percent)))
    else:
        raise validation_error({"id": ["Give the threshold's id, or target and percent."]})
    with transaction.atomic():
        found = list(qs.select_for_update())
        if not found:
            raise DomainError(CommonCode.NOT_FOUND, "No such threshold of this customer.")
        for threshold in found:
            audit_deleted(threshold, snapshot(threshold))
        qs.delete()


def plan_alert_threshold_set(*, plan: Plan, target: str, percent: Decimal) -> tuple[AlertThreshold, bool]:
    """An operator's plan-level threshold (it replaces the 80% default for its target)."""
    target, percent = alert_threshold_validate(target=target, percent=percent)
    with transaction.atomic():
        threshold, created = AlertThreshold.objects.get_or_create(plan=plan, target=target, percent=percent)
        if created:
            audit_created(threshold)
    return threshold, created


# --- detection ----------------------------------------------------------------------------------------

def _mark(customer_pk: int) -> str:
    return f"tollgate:alerts:queued:{customer_pk}"


# customer pk -> monotonic time until which a check this process queued has certainly not started (its
# countdown runs): usage ingested before then is read by that check, so no cache call is needed at all.
_QUEUED: dict[int, float] = process_caches.register("billing.guardrails.alerts._QUEUED", {})


def alerts_check_soon(*, customer_pks: Iterable[int]) -> None:
    """The ingest hook: queue one alert check per customer, ``CHECK_DELAY_SECONDS`` later, unless one is
    queued already. Within the countdown of a check it queued itself, a process does nothing (a dict
    lookup); otherwise one cache ``add`` (one Redis round trip per batch and customer) says whether a check
    is queued by anyone. The check clears the mark before it reads the ledger, so usage after that read
    queues the next check. Queued after commit; a broker failure is logged and never fails the ingest."""
    clock = time.monotonic()
    shared = _cache_is_shared()
    # the cache down (Redis): queue anyway, this process's own countdown still spaces the checks out
    pks = [pk for pk in sorted(set(customer_pks))
           if _QUEUED.get(pk, 0.0) <= clock and (not shared or soft("alerts_cache", cache.add, _mark(pk), 1,
                                                                    timeout=MARK_TTL_SECONDS, default=True))]
    for pk in pks:  # 1 s of margin for the commit and the worker's clock
        _QUEUED[pk] = clock + CHECK_DELAY_SECONDS - 1
    if not pks:
        return

    def enqueue() -> None:
        alerts_check_task = task_named("guardrails.alerts_check")
        for pk in pks:
            try:
                alerts_check_task.apply_async(args=[pk], countdown=CHECK_DELAY_SECONDS)
            except Exception as error:  # the events are committed; the sweep will look at this customer
                degraded("broker", error)
                soft("alerts_cache", cache.delete, _mark(pk), default=None)
                _QUEUED.pop(pk, None)

    transaction.on_commit(enqueue)


def _cache_is_shared() -> bool:
    """Whether the cache is one all processes see (Redis). The embedded default's cache is in process: a
    mark set here could never be cleared by the worker's check, and would block the checks after ingest
    for ``MARK_TTL_SECONDS``; without a shared cache each process debounces on its own (``_QUEUED``)."""
    return "locmem" not in settings.CACHES["default"]["BACKEND"].lower()


def alerts_detect(*, customer: Customer, now: datetime) -> list[Alert]:
    """Record every effective threshold the customer has crossed in the open period (one row each, ever;
    concurrent detections insert it once). Returns the alerts still waiting for their email: this period's,
    and the last period's for a day after it ended (deferred while the mail server was down at the turn
    of the month); older ones stay pending, unsent, as the figures they report are stale by then."""
    figures = selectors.limit_figures(customer=customer, now=now)
    start, end = period_bounds(now)
    crossed = [t for t in selectors.alert_thresholds_effective(customer=customer, now=now, figures=figures) if t.crossed]
    if crossed:
        recorded = set(Alert.objects.filter(customer=customer, period_start=start).values_list("target", "percent"))
        Alert.objects.bulk_create([
            Alert(customer=customer, period_start=start, period_end=end, target=t.target, percent=t.percent,
                  limit=t.figure.limit, used=t.figure.used, unit=t.figure.unit, crossed_at=now)  # type: ignore[union-attr]
            for t in crossed
        ], ignore_conflicts=True)
        new = [(t.target, t.percent) for t in crossed if (t.target, t.percent) not in recorded]
        if new:
            ids = [pk for pk, target, percent in Alert.objects.filter(customer=customer, period_start=start)
                   .values_list("pk", "target", "percent") if (target, percent) in new]
            transaction.on_commit(lambda: soft_limit_crossed.send(sender=Alert, alert_ids=ids))
    return list(Alert.objects.filter(customer=customer, period_end__gt=now - LATE_SEND_WINDOW, period_start__lte=now,
                                     state=Alert.State.PENDING).order_by("period_start", "target", "percent"))


def alerts_check(*, customer_pk: int, now: datetime | None = None) -> int:
    """Detect and deliver for one customer (the task). Returns the number of emails sent by this call;
    raises ``AlertSendDeferred`` when an email could not be handed over (the task retries)."""
    cache.delete(_mark(customer_pk))
    customer = Customer.objects.filter(pk=customer_pk).first()
    if customer is None:
        return 0
    now = now or timezone.now()
    sent = 0
    deferred: list[str] = []
    for alert in alerts_detect(customer=customer, now=now):
        try:
            sent += alert_deliver(alert_pk=alert.pk) == Alert.State.SENT
        except AlertSendDeferred as exc:
            deferred.append(str(exc))
    if deferred:
        raise AlertSendDeferred("; ".join(deferred))
    return sent


def alerts_sweep(*, now: datetime | None = None) -> int:
    """The beat's safety net: check every customer subscribed now (an ingest-time check that was lost
    or debounced away is caught here), and report claims that never recorded ``sent``."""
    now = now or timezone.now()
    stale = Alert.objects.filter(state=Alert.State.SENDING, claimed_at__lt=now - STALE_AFTER)
    for alert in stale:
        log.error("alert %s (customer %s, %s %s%%) was claimed at %s and never recorded as sent: it may or may "
                  "not have been delivered; it will not be sent again", alert.pk, alert.customer_id, alert.target,
                  alert.percent, alert.claimed_at)
    stale.update(state=Alert.State.UNKNOWN, error="claimed, never recorded as sent (worker crash?)")
    customer_pks = (Subscription.objects.filter(start__lte=now).exclude(end__lte=now)
                    .values_list("customer_id", flat=True).distinct())
    sent = 0
    for pk in customer_pks:
        try:
            sent += alerts_check(customer_pk=pk, now=now)
        except AlertSendDeferred as exc:
            log.warning("alert emails of customer %s deferred to the next sweep: %s", pk, exc)
        except Exception:
            log.exception("alert check of customer %s failed", pk)
    return sent


# --- delivery -----------------------------------------------------------------------------------------

def alert_recipients(*, customer: Customer) -> list[str]:
    """The customer's contact email and its dashboard users' emails, without repeats."""
    emails = [customer.email, *customer.users.select_related("user").values_list("user__email", flat=True)]
    return sorted({e.strip().lower() for e in emails if e and e.strip()})


def _email(alert: Alert, recipients: list[str]) -> EmailMessage:
    now = timezone.now()
    figures = {f.target: f for f in selectors.limit_figures(customer=alert.customer, now=now)} \
        if period_bounds(now)[0] == alert.period_start else {}
    figure = figures.get(alert.target)
    used = figure.used if figure else alert.used
    limit = figure.limit if figure else alert.limit
    what = ("spend cap" if alert.target == AlertThreshold.SPEND_CAP
            else f"budget {alert.target.removeprefix(selectors.BUDGET_TARGET_PREFIX)}"
            if alert.target.startswith(selectors.BUDGET_TARGET_PREFIX)
            else f"limit for {alert.target.removeprefix(AlertThreshold.METER_PREFIX)}")
    context: dict[str, Any] = {
        "customer": alert.customer, "what": what, "threshold_percent": decimal_to_text(alert.percent),
        "used": decimal_to_text(used), "limit": decimal_to_text(limit), "unit": alert.unit,
        "used_percent": decimal_to_text((used * 100 / limit).quantize(Decimal("0.1")) if limit > 0 else Decimal(0)),
        "period_start": alert.period_start, "period_end": alert.period_end,
        "dashboard_url": settings.TOLLGATE_BASE_URL.rstrip("/") + "/dashboard/",
    }
    subject = f"[Tollgate] {alert.customer.external_id}: {context['threshold_percent']}% of your {what} reached"
    return EmailMessage(subject=subject, body=render_to_string("guardrails/alert_email.txt", context),
                        from_email=settings.DEFAULT_FROM_EMAIL, to=recipients,
                        headers={"X-Tollgate-Alert": f"{alert.customer.external_id}/{alert.period_start:%Y-%m}/"
                                                     f"{alert.target}/{decimal_to_text(alert.percent)}"})


def _set_state(alert_pk: int, state: str, **fields: Any) -> None:
    Alert.objects.filter(pk=alert_pk, state=Alert.State.SENDING).update(state=state, **fields)


def alert_deliver(*, alert_pk: int) -> str:
    """Send the alert's email if this call wins the claim; returns the alert's state after the call.
    Must run outside a transaction (in autocommit): the claim has to be committed before the send."""
    claimed = Alert.objects.filter(pk=alert_pk, state=Alert.State.PENDING).update(
        state=Alert.State.SENDING, claimed_at=timezone.now(), attempts=F("attempts") + 1)
    if not claimed:  # another worker has it, or it is done
        return Alert.objects.filter(pk=alert_pk).values_list("state", flat=True).first() or ""
    alert = Alert.objects.select_related("customer").get(pk=alert_pk)
    recipients = alert_recipients(customer=alert.customer)
    if not recipients:
        _set_state(alert_pk, Alert.State.NO_RECIPIENTS)
        return Alert.State.NO_RECIPIENTS
    try:
        message = _email(alert, recipients)
    except Exception as exc:  # nothing was sent: back to pending, retried
        _set_state(alert_pk, Alert.State.PENDING, error=f"not sent: {exc!r}"[:2000])
        raise AlertSendDeferred(f"alert {alert_pk}: {exc!r}") from exc
    delivery = deliver_once(message)
    if delivery.outcome == RETRY:
        _set_state(alert_pk, Alert.State.PENDING, error=delivery.error)
        raise AlertSendDeferred(f"alert {alert_pk}: {delivery.error}")
    if delivery.outcome == UNKNOWN:  # never risk a second email
        _set_state(alert_pk, Alert.State.UNKNOWN, recipients=recipients, error=delivery.error)
        log.error("alert %s: delivery unknown, not retried: %s", alert_pk, delivery.error)
        return Alert.State.UNKNOWN
    _set_state(alert_pk, Alert.State.SENT, sent_at=timezone.now(), recipients=recipients, error="")
    return Alert.State.SENT

