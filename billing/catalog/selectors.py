from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, Prefetch, Q, QuerySet

from billing.catalog.models import Meter, Plan, RateCardVersion, Subscription
from billing.common.errors import CommonCode, DomainError


def meter_list() -> QuerySet[Meter]:
    return Meter.objects.all()


def meter_keys() -> set[str]:
    return set(Meter.objects.values_list("key", flat=True))


def plan_get(*, key: str) -> Plan:
    plan = Plan.objects.filter(key=key).first()
    if plan is None:
        raise DomainError(CommonCode.NOT_FOUND, f"No plan '{key}'.")
    return plan


def plan_list() -> QuerySet[Plan]:
    return Plan.objects.prefetch_related("versions")


@dataclass(frozen=True)
class PlanSummary:
    """A plan as the console lists it: its versions by number, the one in effect and its subscribers now."""

    plan: Plan
    versions: list[RateCardVersion]
    current: RateCardVersion | None
    subscribers: int


def plan_summaries(*, now: datetime) -> list[PlanSummary]:
    """Every plan with its versions and current subscribers: three queries, whatever the number of plans."""
    plans = list(Plan.objects.order_by("key").prefetch_related(
        Prefetch("versions", queryset=RateCardVersion.objects.order_by("number"))))
    subscribers = dict(Subscription.objects.filter(Q(end__isnull=True) | Q(end__gt=now), start__lte=now)
                       .values("plan_id").annotate(n=Count("id")).values_list("plan_id", "n"))
    out = []
    for plan in plans:
        versions = list(plan.versions.all())
        current = max((v for v in versions if v.effective_from <= now), key=lambda v: v.effective_from, default=None)
        out.append(PlanSummary(plan, versions, current, subscribers.get(plan.pk, 0)))
    return out


def plan_versions(*, plan: Plan) -> list[RateCardVersion]:
    """The plan's versions, newest first."""
    return list(plan.versions.order_by("-number"))


def plan_subscriptions_now(*, plan: Plan, now: datetime) -> list[Subscription]:
    """The plan's subscriptions in effect at ``now``, with their customers (one query)."""
    return list(Subscription.objects.select_related("customer", "plan")
                .filter(Q(end__isnull=True) | Q(end__gt=now), plan=plan, start__lte=now))


def plan_subscribers(*, plan: Plan, now: datetime) -> list[tuple[str, str]]:
    """(external id, name) of the plan's customers now, by id: whom a simulation may be run for."""
    return sorted((s.customer.external_id, s.customer.name) for s in plan_subscriptions_now(plan=plan, now=now))


def version_in_effect(*, plan: Plan, at: datetime) -> RateCardVersion | None:
    return plan.versions.filter(effective_from__lte=at).order_by("-effective_from").first()


def versions_over(*, plan: Plan, start: datetime, end: datetime, versions: list[RateCardVersion] | None = None
                  ) -> list[tuple[datetime, datetime, RateCardVersion]]:
    """The versions in effect over [start, end), each with the sub-interval it governs. ``versions``: the
    plan's versions, oldest first, when the caller has read them already."""
    versions = list(plan.versions.order_by("effective_from")) if versions is None else versions
    out = []
    for index, version in enumerate(versions):
        v_start = version.effective_from
        v_end = versions[index + 1].effective_from if index + 1 < len(versions) else None
        lo = max(v_start, start)
        hi = end if v_end is None else min(v_end, end)
        if lo < hi:
            out.append((lo, hi, version))
    return out


def subscription_at(*, customer: Any, at: datetime) -> Subscription | None:
    return (Subscription.objects.select_related("plan")
            .filter(Q(end__isnull=True) | Q(end__gt=at), customer=customer, start__lte=at)
            .order_by("-start").first())


def plan_export_entries(plan: Plan) -> list[dict[str, Any]]:
    """The plan as catalog-file entries, one per version, oldest first."""
    entries = []
    for version in plan.versions.order_by("effective_from"):
        entry: dict[str, Any] = {
            "key": plan.key, "name": plan.name, "currency": plan.currency, "interval": plan.interval,
            "effective_from": version.effective_from.isoformat().replace("+00:00", "Z"),
            "version": version.number,
        }
        terms = version.rate_card.as_definition()
        if terms["spend_cap"] is None:
            del terms["spend_cap"]
        entries.append({**entry, **terms})
    return entries


def catalog_export() -> dict[str, Any]:
    meters = [
        {"key": m.key, "name": m.name, "unit": m.unit, "aggregation": m.aggregation,
         **({"unique_by": m.unique_by} if m.unique_by else {})}
        for m in Meter.objects.order_by("key")
    ]
    plans = [entry for plan in Plan.objects.order_by("key") for entry in plan_export_entries(plan)]
    return {"meters": meters, "plans": plans}

