"""Billing periods and when they close.

Every plan bills calendar months in UTC, half-open ``[start, end)`` (billing/common/calendar.py). A period stays open for
``TOLLGATE_PERIOD_GRACE_SECONDS`` (default one hour) after its end: late events still land in it. Then
``period_close`` records it closed (``PeriodClose``); from then on ingest answers events for it with
422 ``period_closed``, and a correction of one of its events is booked on the current period as an
adjustment. Finalization waits ``TOLLGATE_FINALIZE_DELAY_SECONDS`` after the close so that requests
already past the check when the period closed (and processes still holding the cached answer) have
committed: what they stored is then in the invoice.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max

from billing.common import process_caches
from billing.common.calendar import EPOCH, period_bounds
from billing.invoicing.models import PeriodClose

_cache: tuple[float, datetime] | None = None


def grace() -> timedelta:
    return timedelta(seconds=settings.TOLLGATE_PERIOD_GRACE_SECONDS)


def closed_until() -> datetime:
    """Events with ``usage_at`` before this instant belong to closed periods (read fresh)."""
    return PeriodClose.objects.aggregate(m=Max("period_end"))["m"] or EPOCH


def closed_until_cached() -> datetime:
    """``closed_until`` as ingest sees it: cached per process for ``TOLLGATE_PERIOD_CACHE_SECONDS``."""
    global _cache
    now = time.monotonic()
    if _cache is None or now - _cache[0] > settings.TOLLGATE_PERIOD_CACHE_SECONDS:
        _cache = (now, closed_until())
    return _cache[1]


def forget_cache() -> None:
    global _cache
    _cache = None


process_caches.register_clearer("billing.invoicing.periods.closed_until_cached", forget_cache)


def closable_period_ends(*, now: datetime, first_start: datetime) -> list[tuple[datetime, datetime]]:
    """Periods from the one holding ``first_start`` whose end plus grace has passed at ``now``."""
    out = []
    start, end = period_bounds(first_start)
    while end + grace() <= now:
        out.append((start, end))
        start, end = period_bounds(end)
    return out


def period_close(*, start: datetime, end: datetime, now: datetime) -> bool:
    """Record [start, end) closed; True when this call closed it (idempotent, unique in the database)."""
    try:
        with transaction.atomic():
            PeriodClose.objects.create(period_start=start, period_end=end, closed_at=now)
    except IntegrityError:
        return False
    forget_cache()
    return True
