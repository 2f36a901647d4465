"""Reads of anomaly detection: who is watched now and at what counter, the review queue, one anomaly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Q, QuerySet

from billing.catalog.models import Subscription
from billing.catalog.ratecard import Anomaly as AnomalyTerms
from billing.common.errors import CommonCode, DomainError
from billing.common.fields import decimal_to_text
from billing.customers.models import Customer
from billing.guardrails import accounts as acc
from billing.guardrails.anomalies.baseline import DAY, KEEP, minutes
from billing.guardrails.limits.subscribed import SubscribedPlans
from billing.guardrails.models import Anomaly, SpendSample
from ledger.backends import get_ledger


@dataclass(frozen=True)
class Watched:
    """A customer whose terms in effect now set anomaly detection, in its plan's currency."""

    customer_pk: int
    currency: str
    terms: AnomalyTerms


def watched_now(*, now: datetime) -> list[Watched]:
    """Every customer subscribed now whose terms in effect (the plan's version, or its override) set
    ``anomaly``: the subscriptions in one statement, rate cards from the catalog's cache."""
    pks = list(Subscription.objects.filter(Q(end__isnull=True) | Q(end__gt=now), start__lte=now)
               .values_list("customer_id", flat=True).distinct())
    plans = SubscribedPlans(pks)
    out = []
    for pk in sorted(set(pks)):
        found = plans.at(pk, now)
        if found is not None and found[1].card.anomaly is not None:
            out.append(Watched(pk, found[0].currency, found[1].card.anomaly))
    return out


def spend_counters(*, watched: list[Watched]) -> dict[tuple[int, str], Decimal]:
    """Each watched customer's spend-watch counter (cumulative spend posted at ingest), one ledger lookup for
    all; a customer without priced usage yet has none and counts 0."""
    ids = {(w.customer_pk, w.currency): acc.Ids(w.customer_pk).spend_watch(w.currency) for w in watched}
    found = get_ledger().lookup_accounts(list(ids.values())) if ids else {}
    return {key: acc.units_to_money(found[i].debits_posted) if i in found else Decimal(0) for key, i in ids.items()}


@dataclass(frozen=True)
class History:
    """What detection needs of a customer's anomalies of the last ``KEEP``."""

    open: bool
    excluded: list[tuple[datetime, datetime]]  # spans of spikes not accepted: not part of the baseline
    accepted: list[Decimal]  # rates of spikes accepted (resumed) in the last day
    last_resolved_at: datetime | None


def anomaly_history(*, customer_pk: int, currency: str, now: datetime) -> History:
    rows = Anomaly.objects.filter(customer_id=customer_pk, currency=currency).filter(
        Q(status=Anomaly.Status.OPEN) | Q(resolved_at__gte=now - KEEP))
    is_open, excluded, accepted, last = False, [], [], None
    for row in rows:
        if row.status == Anomaly.Status.OPEN:
            is_open = True
            excluded.append((row.window_start, now))
            continue
        assert row.resolved_at is not None
        last = row.resolved_at if last is None else max(last, row.resolved_at)
        if row.resolution == Anomaly.Resolution.RESUME:
            if row.resolved_at >= now - DAY:
                accepted.append(window_rate(row))
        else:
            excluded.append((row.window_start, row.resolved_at))
    return History(is_open, excluded, accepted, last)


def window_rate(anomaly: Anomaly) -> Decimal:
    span = minutes(anomaly.window_end - anomaly.window_start)
    return anomaly.window_spend / span if span > 0 else anomaly.window_spend


def window_start_sample(*, customer_pk: int, currency: str, start: datetime, not_before: datetime | None
                        ) -> SpendSample | None:
    """The sample a window beginning at ``start`` is measured from: the last one at or before it (the
    first one kept when the watch is younger than the window), and never one before ``not_before`` (the
    last resolution: a spike reviewed already is not counted again)."""
    samples = SpendSample.objects.filter(customer_id=customer_pk, currency=currency)
    if not_before is not None:
        samples = samples.filter(at__gte=not_before)
    return (samples.filter(at__lte=start).order_by("-at").first()
            or samples.order_by("at").first())


# --- the review queue -------------------------------------------------------------------------------

def anomalies_list(*, status: str | None = None, customer: Customer | None = None) -> QuerySet[Anomaly]:
    """Anomalies, newest first; open ones first when no status is asked for."""
    qs = Anomaly.objects.select_related("customer", "pause")
    if status:
        qs = qs.filter(status=status)
    if customer is not None:
        qs = qs.filter(customer=customer)
    return qs.order_by("-status", "-opened_at", "-pk") if not status else qs.order_by("-opened_at", "-pk")


def anomaly_get(*, public_id: str, customer_pk: int | None = None) -> Anomaly:
    """One anomaly by its id; 404 when it does not exist for the caller (a key restricted to a customer sees
    that customer's only)."""
    qs = Anomaly.objects.select_related("customer", "pause").filter(public_id=public_id)
    if customer_pk is not None:
        qs = qs.filter(customer_id=customer_pk)
    anomaly = qs.first()
    if anomaly is None:
        raise DomainError(CommonCode.NOT_FOUND, "No such anomaly.")
    return anomaly


def anomaly_multiple(anomaly: Anomaly) -> Decimal:
    """How many times the baseline the window spent (what the queue shows as "x times")."""
    expected = anomaly.baseline_rate * minutes(anomaly.window_end - anomaly.window_start)
    return anomaly.window_spend / expected if expected > 0 else Decimal(0)


def anomaly_as_dict(anomaly: Anomaly) -> dict[str, object]:
    """An anomaly as the API and the webhooks show it (docs/api.md, "Anomalies")."""
    t = decimal_to_text
    pause = anomaly.pause
    return {
        "id": anomaly.public_id, "customer": anomaly.customer.external_id, "currency": anomaly.currency,
        "status": anomaly.status, "opened_at": anomaly.opened_at,
        "window": {"start": anomaly.window_start, "end": anomaly.window_end, "minutes": anomaly.window_minutes},
        "window_spend": t(anomaly.window_spend), "baseline_rate": t(anomaly.baseline_rate.quantize(Decimal("1e-12"))),
        "expected_spend": t((anomaly.baseline_rate * minutes(anomaly.window_end - anomaly.window_start))
                            .quantize(Decimal("1e-12"))),
        "factor": t(anomaly.factor), "min_spend": t(anomaly.min_spend), "action": anomaly.action,
        "pause": None if pause is None else {"pause_id": pause.pause_id, "active": pause.lifted_at is None},
        "resolution": anomaly.resolution or None, "note": anomaly.note, "resolved_by": anomaly.resolved_by or None,
        "resolved_at": anomaly.resolved_at,
    }


def samples_between(*, customer_pk: int, currency: str, start: datetime, end: datetime) -> list[SpendSample]:
    """The samples kept in [start, end] (the chart of the window), oldest first."""
    return list(SpendSample.objects.filter(customer_id=customer_pk, currency=currency, at__gte=start, at__lte=end)
                .order_by("at"))

