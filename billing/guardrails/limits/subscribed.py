"""The subscriptions and rate-card versions of a batch's customers (``SubscribedPlans``), read once per batch."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection

from billing.catalog import ratecard
from billing.catalog.models import Plan, RateCardVersion, Subscription
from billing.common.calendar import period_bounds
from billing.common.fields import aware_utc
from billing.customers.models import Customer
from billing.guardrails.guards import BudgetTerms, GuardState, Override, current_states


@dataclass(frozen=True, slots=True)
class Sub:
    """What limits need of a subscription."""

    pk: int
    customer_id: int
    plan_id: int
    start: datetime
    end: datetime | None
    currency: str


@dataclass(frozen=True, slots=True)
class Version:
    """What limits need of a rate-card version (immutable once stored)."""

    pk: int
    plan_id: int
    effective_from: datetime
    card: ratecard.RateCard
    key: tuple[Any, ...] = ()  # what the card's terms depend on: the version, and the customer's override


_PLAN_COLUMNS = 's.id, s.plan_id, s.start, s."end", p.currency, v.id, v.effective_from, v.created_at'


_PLAN_JOINS = (f"JOIN {Plan._meta.db_table} p ON p.id = s.plan_id "
                f"JOIN {RateCardVersion._meta.db_table} v ON v.plan_id = s.plan_id")


class SubscribedPlans:
    """Subscriptions and rate-card versions of a batch's customers, loaded once: one plain statement
    (every limited ingest batch asks: cheaper than the ORM's two querysets), or none when ingest read
    them with its customers (``of_customers``); rate cards from the catalog's process cache."""

    def __init__(self, customer_pks: Iterable[int], rows: list[tuple[Any, ...]] | None = None,
                 states: dict[int, GuardState] | None = None) -> None:
        """``rows``: (customer, subscription, plan, start, end, currency, version, effective_from,
        created_at) as ``of_customers`` read them; read here when not given. ``states``: the customers'
        guard states (overrides of their plans' terms, budgets; ingest has them), read here when not given."""
        self.subscriptions: dict[int, list[Sub]] = defaultdict(list)
        self.versions: dict[int, list[Version]] = defaultdict(list)
        pks = sorted(set(customer_pks))
        self.overrides: dict[int, Override] = {}
        self.budgets: dict[int, tuple[BudgetTerms, ...]] = {}
        self.use_states(states if states is not None else current_states(pks))
        if rows is None and pks:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT s.customer_id, {_PLAN_COLUMNS} FROM {Subscription._meta.db_table} s {_PLAN_JOINS} "  # noqa: S608
                    f"WHERE s.customer_id IN ({', '.join(['%s'] * len(pks))})", pks)
                rows = cursor.fetchall()
        self._load(rows or [])

    @classmethod
    def of_customers(cls, external_ids: Iterable[str]) -> tuple[dict[str, tuple[int, bool, int]], SubscribedPlans]:
        """The customers by external id, each as (pk, has any subscription, guard revision), and the
        subscribed plans of all of them, in one statement (ingest's first read of every batch). The plans'
        ``overrides`` are the caller's to set (from the customers' guard states)."""
        ids = sorted(set(external_ids))
        if not ids:
            return {}, cls([], states={})
        customers: dict[str, tuple[int, bool, int]] = {}
        rows: list[tuple[Any, ...]] = []
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT c.id, c.external_id, EXISTS (SELECT 1 FROM {Subscription._meta.db_table} x "  # noqa: S608
                f"WHERE x.customer_id = c.id), c.guard_revision, {_PLAN_COLUMNS} FROM {Customer._meta.db_table} c "
                f"LEFT JOIN ({Subscription._meta.db_table} s {_PLAN_JOINS}) ON s.customer_id = c.id "
                f"WHERE c.external_id IN ({', '.join(['%s'] * len(ids))})", ids)
            for pk, external_id, subscribed, revision, *plan in cursor.fetchall():
                customers[external_id] = (pk, bool(subscribed), revision)
                if plan[0] is not None:
                    rows.append((pk, *plan))
        return customers, cls([pk for pk, _, _ in customers.values()], rows, states={})

    def use_states(self, states: dict[int, GuardState]) -> None:
        """Take the customers' overrides and budgets from their guard states."""
        self.overrides = {pk: s.override for pk, s in states.items() if s.override is not None}
        self.budgets = {pk: s.budgets for pk, s in states.items() if s.budgets}

    def _load(self, rows: list[tuple[Any, ...]]) -> None:
        rows = sorted(((cid, sid, plan, aware_utc(start), aware_utc(end), cur, vid, aware_utc(eff), aware_utc(created))
                       for cid, sid, plan, start, end, cur, vid, eff, created in rows),
                      key=lambda row: (row[1], row[7]))  # subscription, then effective_from
        cards: dict[int, ratecard.RateCard] = {}
        created_of: dict[int, datetime] = {}
        for *_, vid, _eff, created in rows:
            card = ratecard.cached(vid, created)
            if card is None:
                created_of[vid] = created
            else:
                cards[vid] = card
        if created_of:
            for vid, definition in RateCardVersion.objects.filter(pk__in=created_of).values_list("pk", "definition"):
                cards[vid] = ratecard.of_version(vid, created_of[vid], definition)
        seen_subs: set[int] = set()
        seen_versions: set[int] = set()
        for cid, sid, plan, start, end, cur, vid, eff, created in rows:
            if sid not in seen_subs:
                seen_subs.add(sid)
                self.subscriptions[cid].append(Sub(sid, cid, plan, start, end, cur))
            if vid not in seen_versions:
                seen_versions.add(vid)
                self.versions[plan].append(Version(vid, plan, eff, cards[vid], (vid, created)))
        for versions in self.versions.values():
            versions.sort(key=lambda v: v.effective_from)

    def at(self, customer_pk: int, moment: datetime) -> tuple[Sub, Version] | None:
        sub = next((s for s in self.subscriptions.get(customer_pk, ())
                    if s.start <= moment and (s.end is None or moment < s.end)), None)
        if sub is None:
            return None
        version = None
        for candidate in self.versions.get(sub.plan_id, ()):
            if candidate.effective_from <= moment:
                version = candidate
        if version is None:
            return None
        override = self.overrides.get(customer_pk)
        if override is not None:  # the customer's own terms in place of the plan's
            version = Version(version.pk, version.plan_id, version.effective_from, override.apply(version.card),
                              (*version.key, "override", override.revision))
        return sub, version

    def span(self, customer_pk: int, moment: datetime) -> tuple[Sub, Version, datetime, datetime] | None:
        """``at``, with the half-open stretch [lo, hi) around ``moment`` in which the answer and the limits'
        period stay the same (a batch's events mostly share one)."""
        found = self.at(customer_pk, moment)
        if found is None:
            return None
        sub, version = found
        lo, hi = period_bounds(moment)
        lo = max(lo, sub.start, version.effective_from)
        if sub.end is not None:
            hi = min(hi, sub.end)
        later = [v.effective_from for v in self.versions.get(sub.plan_id, ()) if v.effective_from > moment]
        if later:
            hi = min(hi, min(later))
        return sub, version, lo, hi
