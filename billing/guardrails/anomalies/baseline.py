"""The arithmetic of anomaly detection, pure and clock-free (docs/anomalies.md, "Method").

Rates are money per minute (``Decimal``). A watch keeps the spend rate of each complete clock hour of the
last ``KEEP`` (eight days: a week and the hour around it); the baseline is the highest of

- the busiest hour of the last 24 hours (a quiet night does not lower the bar for the next busy morning),
- the busiest of the three hours around this one a week ago (a Monday morning after a quiet weekend),
- half the busiest hour kept (the floor: a quiet day does not make a normal hour look like a spike),
- the rate of a spike an operator accepted (resolved ``resume``) in the last 24 hours.

Hours that overlap an anomaly not accepted (open, or resolved ``keep_paused``) are left out: a runaway does
not become the baseline. Until one hour has been measured there is no baseline and nothing opens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

HOUR = timedelta(hours=1)
KEEP = timedelta(days=8)
WEEK = timedelta(days=7)
DAY = timedelta(days=1)
MIN_HOUR_SPAN = timedelta(minutes=30)  # a first hour sampled for less than this is not measured
FLOOR_SHARE = Decimal("0.5")
RATE_QUANTUM = Decimal("1e-12")  # rates are kept at the ledger's scale

Hours = list[list[int | str]]  # [[hour start (unix seconds), rate per minute (str)], ...], oldest first


def hour_of(at: datetime) -> datetime:
    return at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def minute_of(at: datetime) -> datetime:
    return at.astimezone(timezone.utc).replace(second=0, microsecond=0)


def minutes(span: timedelta) -> Decimal:
    return Decimal(int(span.total_seconds() * 1_000_000)) / Decimal(60_000_000)


@dataclass(frozen=True)
class HourMark:
    """Where the hour being measured began: its first sample's time and the counter then."""

    at: datetime
    spent: Decimal


def hours_record(hours: Hours, mark: HourMark, at: datetime, spent: Decimal) -> tuple[Hours, HourMark]:
    """Account for a sample: when it is the first of a new clock hour, the hours since ``mark`` are complete
    and get their rate (the spend between the two samples over the time between them, the same for each hour
    when the sampler missed some); returns the hours, pruned to ``KEEP``, and the mark to measure from."""
    if hour_of(at) <= hour_of(mark.at):
        return hours, mark
    span = at - mark.at
    if span >= MIN_HOUR_SPAN:
        rate = ((spent - mark.spent) / minutes(span)).quantize(RATE_QUANTUM)
        start = hour_of(mark.at)
        known = {int(h[0]) for h in hours}
        while start < hour_of(at):
            stamp = int(start.timestamp())
            if stamp not in known:
                hours = [*hours, [stamp, str(rate)]]
            start += HOUR
    cutoff = int((at - KEEP).timestamp())
    return [h for h in hours if int(h[0]) >= cutoff], HourMark(at, spent)


def _overlaps(start: datetime, spans: Iterable[tuple[datetime, datetime]]) -> bool:
    end = start + HOUR
    return any(lo < end and start < hi for lo, hi in spans)


def baseline_rate(hours: Sequence[Sequence[int | str]], now: datetime,
                  excluded: Sequence[tuple[datetime, datetime]] = (), accepted: Sequence[Decimal] = ()
                  ) -> Decimal | None:
    """The baseline spend rate per minute at ``now`` (the module's docstring), or None before any hour
    has been measured (cold start)."""
    usable = [(datetime.fromtimestamp(int(h[0]), timezone.utc), Decimal(str(h[1]))) for h in hours]
    usable = [(start, rate) for start, rate in usable if not _overlaps(start, excluded)]
    if not usable:
        return None
    this_hour = hour_of(now)
    recent = [rate for start, rate in usable if start >= this_hour - DAY]
    week_ago = [rate for start, rate in usable if this_hour - WEEK - HOUR <= start <= this_hour - WEEK + HOUR]
    floor = max(rate for _, rate in usable) * FLOOR_SHARE
    return max([floor, *recent, *week_ago, *accepted])


def is_anomalous(*, window_spend: Decimal, window: timedelta, baseline: Decimal, factor: Decimal,
                 min_spend: Decimal) -> bool:
    """The contract's test: the window's spend exceeds ``min_spend`` and ``factor`` times what the baseline
    rate spends in the window's length."""
    return window_spend > min_spend and window_spend > factor * baseline * minutes(window)
