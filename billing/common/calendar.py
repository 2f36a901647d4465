"""The billing calendar, the one home of its rule: every plan bills calendar months in UTC, half-open
``[start, end)``. Limits, invoices, alerts and the dashboard all ask here which period a moment is in."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ledger.ids import period_code

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def period_bounds(at: datetime) -> tuple[datetime, datetime]:
    """The period holding ``at``: its calendar month (UTC), ``[start, end)``."""
    at = at.astimezone(timezone.utc)
    start = datetime(at.year, at.month, 1, tzinfo=timezone.utc)
    end = datetime(at.year + (at.month == 12), at.month % 12 + 1, 1, tzinfo=timezone.utc)
    return start, end


def previous_period(start: datetime) -> tuple[datetime, datetime]:
    """The period before the one starting at ``start``."""
    return period_bounds(start - timedelta(microseconds=1))


def next_period_start(at: datetime) -> datetime:
    return period_bounds(at)[1]


def period_key(at: datetime) -> int:
    """The period holding ``at`` as an integer (202611): part of its ledger account ids and ``user_data_32``."""
    at = at.astimezone(timezone.utc)
    return period_code(at.year, at.month)


def day_key(at: datetime) -> int:
    """The UTC day holding ``at`` as an integer (20261207): a daily budget's period in its ledger account."""
    at = at.astimezone(timezone.utc)
    return at.year * 10000 + at.month * 100 + at.day
