"""The usage an invoice is priced from, as rows: the hourly rollups for whole hours (and the raw events
for hours a rate-card change cuts and for the tail not rolled up yet), or the raw events alone when
an invoice is replayed (``source="raw"``). Both give the same aggregates, which is what
``manage.py invoice verify`` proves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction

from billing.catalog.models import Meter
from billing.customers.models import Customer
from billing.usage.models import UsageEvent
from billing.usage.selectors import dimension_sets, rollup_ranges_read

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class UsageTotal:
    """Aggregated usage of one meter and dimension set at one moment (an hour, or an event's time)."""

    meter: str
    dimensions: dict[str, str]
    at: datetime
    total: Decimal
    maximum: Decimal | None
    uniques: frozenset[str]
    latest: tuple[datetime, int, Decimal] | None


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def meters_by_pk() -> dict[int, Meter]:
    return {m.pk: m for m in Meter.objects.all()}


def period_rows(*, customer: Customer, start: datetime, end: datetime, cuts: Iterable[datetime] = (),
                source: str = "rollups", meters: dict[int, Meter] | None = None) -> tuple[list[UsageTotal], int]:
    """Billable usage of ``customer`` with ``usage_at`` in [start, end). ``cuts`` are instants where the
    price changes: an hour holding one off the hour is read from raw events. Returns the rows and the
    rollup watermark they were read at (0 for raw). ``meters`` (by pk) saves reading them."""
    meters = meters if meters is not None else meters_by_pk()
    raw = UsageEvent.objects.filter(customer=customer, billable=True, usage_at__gte=start, usage_at__lt=end)
    if source != "rollups":
        return _event_rows(meters, raw.order_by().values_list(*EVENT_FIELDS).iterator(chunk_size=5000)), 0
    cuts = list(cuts)
    cut_hours = sorted({_hour(c) for c in cuts if c != _hour(c) and start <= c < end})
    lo = start if start == _hour(start) else _hour(start) + HOUR  # first whole hour
    hi = max(_hour(end), lo)  # end of the last whole hour
    on_hour = sorted({c for c in cuts if c == _hour(c) and lo < c < hi})  # a range never spans a price change
    # SQLite: one transaction reads one snapshot. PostgreSQL: one statement reads the watermark and the rollups.
    with transaction.atomic(savepoint=False):
        rows, watermark = _rolled(customer, meters, _whole_ranges(lo, hi, cut_hours, on_hour) if lo < hi else [])
        if not watermark:
            return _event_rows(meters, raw.order_by().values_list(*EVENT_FIELDS).iterator(chunk_size=5000)), 0
        # raw: the events above the watermark the rollups were read at (not in them, whenever they are rolled
        # up), and (rolled up or not) the partial hours at the edges and the cut hours, one part per stretch,
        # each an index range scan of (customer, meter, usage_at) (an OR of stretches, or no meter, would read
        # every event of the period); all in one statement, not a server-side cursor (round trips, and
        # PostgreSQL plans a cursor for a fast first row)
        stretches = _union([(start, lo), (hi, end)] + [(max(h, start), min(h + HOUR, end)) for h in cut_hours])
        parts = [raw.filter(id__gt=watermark)] + [
            raw.filter(meter_id__in=list(meters), usage_at__gte=a, usage_at__lt=b, id__lte=watermark)
            for a, b in stretches]
        values = [query.order_by().values_list(*EVENT_FIELDS) for query in parts]
        return rows + _event_rows(meters, values[0].union(*values[1:], all=True)), watermark


# Meters whose rollup rows are read as (dimension set, total) alone
KEYED = (Meter.Aggregation.SUM, Meter.Aggregation.COUNT, Meter.Aggregation.UNIQUE_COUNT)
EVENT_FIELDS = ("pk", "meter_id", "dimensions", "quantity", "usage_at")


def _event_rows(meters: dict[int, Meter], values: Iterable[tuple[Any, ...]]) -> list[UsageTotal]:
    return [event_row(meters[meter_id], dims or {}, quantity, usage_at, event_pk)
            for event_pk, meter_id, dims, quantity, usage_at in values]


def _union(stretches: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Non-empty half-open stretches merged where they overlap or touch: each instant in exactly one."""
    merged: list[tuple[datetime, datetime]] = []
    for a, b in sorted(s for s in stretches if s[0] < s[1]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _whole_ranges(lo: datetime, hi: datetime, cut_hours: list[datetime], splits: list[datetime]
                  ) -> list[tuple[datetime, datetime]]:
    """[lo, hi) without the cut hours, as ranges of whole hours, also split at ``splits``."""
    ranges, at = [], lo
    for moment, skip in sorted([(h, True) for h in cut_hours if lo <= h < hi] + [(c, False) for c in splits]):
        if at < moment:
            ranges.append((at, moment))
        at = max(at, moment + HOUR if skip else moment)
    if at < hi:
        ranges.append((at, hi))
    return ranges


def _rolled(customer: Customer, meters: dict[int, Meter], ranges: list[tuple[datetime, datetime]]
            ) -> tuple[list[UsageTotal], int]:
    """Rollup rows over whole-hour ranges and the watermark they hold the events up to
    (billing.usage.selectors.rollup_ranges_read: one row per range, meter and dimension set on PostgreSQL,
    hour by hour and day by day elsewhere; the caller holds a transaction: one snapshot)."""
    found, watermark = rollup_ranges_read(customer_pk=customer.pk, meter_pks=list(meters), ranges=ranges,
                                          keyed={pk for pk, m in meters.items() if m.aggregation in KEYED})
    dimensions = dimension_sets({row[2] for row in found})
    out = []
    for at, meter_id, key, total, maximum, uniques, l_at, l_event, l_value in found:
        latest = (l_at, l_event, l_value) if l_at is not None and l_event is not None and l_value is not None else None
        meter, dims = meters[meter_id], dimensions[key]
        if meter.aggregation == Meter.Aggregation.UNIQUE_COUNT:
            uniques = [dims[meter.unique_by]] if meter.unique_by in dims else []
        out.append(UsageTotal(meter.key, dims, at, total, maximum, frozenset(uniques), latest))
    return out, watermark


def event_row(meter: Meter, dims: dict[str, str], quantity: Decimal, usage_at: datetime, event_pk: int) -> UsageTotal:
    unique = dims.get(meter.unique_by) if meter.aggregation == Meter.Aggregation.UNIQUE_COUNT else None
    return UsageTotal(meter.key, dims, usage_at, quantity, quantity, frozenset([unique] if unique is not None else []),
               (usage_at, event_pk, quantity))


def correction_rows(*, customer: Customer, start: datetime, end: datetime,
                    meters: dict[int, Meter] | None = None) -> list[dict[str, Any]]:
    """The period's billable corrections (few): each with its meter, dimensions, quantity and what it corrects.
    ``adjustment`` marks a correction whose original lies in an earlier, closed period."""
    meters = meters if meters is not None else meters_by_pk()
    rows = (UsageEvent.objects.filter(customer=customer, billable=True, usage_at__gte=start, usage_at__lt=end)
            .exclude(corrects="").order_by("usage_at", "pk")
            .values_list("pk", "event_id", "meter_id", "dimensions", "quantity", "usage_at", "corrects", "reason"))
    return [{"pk": pk, "event_id": event_id, "meter": meters[meter_id].key, "dimensions": dims or {}, "quantity": quantity,
             "at": usage_at, "corrects": corrects, "adjustment": reason == "adjustment"}
            for pk, event_id, meter_id, dims, quantity, usage_at, corrects, reason in rows]


def events_digest(*, customer: Customer, start: datetime, end: datetime) -> tuple[str, int]:
    """SHA-256 over the period's billable events (``event_id`` and body fingerprint, sorted by event_id):
    the identity of the event set an invoice was computed from."""
    digest = hashlib.sha256()
    count = 0
    rows = (UsageEvent.objects.filter(customer=customer, billable=True, usage_at__gte=start, usage_at__lt=end)
            .order_by("event_id").values_list("event_id", "fingerprint"))
    for event_id, fingerprint in rows.iterator(chunk_size=10000):
        digest.update(f"{event_id}\x1f{fingerprint}\n".encode())
        count += 1
    return digest.hexdigest(), count
