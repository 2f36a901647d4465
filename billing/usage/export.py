"""Usage as CSV, streamed: the rows of ``GET /customers/{id}/usage`` without ever holding them all.

``usage_rows_stream`` yields exactly the rows (and in the same order: meter, bucket, group) that
``selectors.usage_aggregate`` returns for the whole range, but it asks for one meter and one *window*
of whole buckets at a time (a day of hours, a week of days, a month), so memory holds one window's
aggregates and one chunk of raw events (``iterator(chunk_size=5000)``, a server-side cursor on
PostgreSQL), never the range. Windows end on bucket boundaries, so no bucket is split between two
calls and ``unique_count`` stays exact. Only the span between the meter's first and last event in the
range is walked.

Cells are spreadsheet-safe: a text cell starting with ``= + - @``, a tab or a carriage return gets a
leading ``'`` (OWASP's advice against formula injection); a cell that is a plain decimal number
(``-5``, ``+3.5``) is a number, not a formula, and is left alone so it stays numeric. Timestamps are UTC,
ISO 8601 with ``Z``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from django.db.models import Max, Min

from billing.catalog.models import Meter
from billing.common.fields import decimal_to_text
from billing.customers.models import Customer
from billing.usage.models import UsageEvent
from billing.usage.selectors import bucket_bounds, usage_aggregate

_SPAN = {"hour": timedelta(days=1), "day": timedelta(days=7), "month": timedelta(days=31)}
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_DANGEROUS = ("=", "+", "-", "@", "\t", "\r")
CHUNK_BYTES = 64 * 1024


def csv_cell(value: Any) -> str:
    """One cell's text, neutralised against formula injection unless it is a plain number."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return decimal_to_text(value)
    if isinstance(value, datetime):
        return iso_utc(value)
    text = str(value)
    if text.startswith(_DANGEROUS) and not _NUMBER.match(text):
        return "'" + text
    return text


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _windows(start: datetime, end: datetime, granularity: str) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) cut into windows that end on bucket boundaries (the last one at ``end``)."""
    lo = start
    while lo < end:
        hi = bucket_bounds(lo + _SPAN[granularity], granularity)[0]
        if hi <= lo:
            hi = bucket_bounds(lo, granularity)[1]
        hi = min(hi, end)
        yield lo, hi
        lo = hi


def usage_rows_stream(
    *,
    customer: Customer,
    start: datetime,
    end: datetime,
    granularity: str,
    meter: Meter | None = None,
    group_by: tuple[str, ...] = (),
) -> Iterator[dict[str, Any]]:
    """The rows of ``usage_aggregate`` over [start, end), one window at a time, in the same order."""
    meters = [meter] if meter is not None else list(Meter.objects.order_by("key"))
    for current in meters:
        span = UsageEvent.objects.filter(customer=customer, meter=current, usage_at__gte=start, usage_at__lt=end
                                         ).aggregate(first=Min("usage_at"), last=Max("usage_at"))
        if span["first"] is None:
            continue
        lo = max(start, bucket_bounds(span["first"], granularity)[0])
        hi = min(end, bucket_bounds(span["last"], granularity)[1])
        for w_start, w_end in _windows(lo, hi, granularity):
            yield from usage_aggregate(customer=customer, start=w_start, end=w_end, granularity=granularity,
                                       meter=current, group_by=group_by)


class _Line:
    """A file-like object for csv.writer that hands back what it was given."""

    def write(self, text: str) -> str:
        return text


def usage_csv_lines(
    *,
    customer: Customer,
    start: datetime,
    end: datetime,
    granularity: str,
    meter: Meter | None = None,
    group_by: tuple[str, ...] = (),
) -> Iterator[bytes]:
    """CSV text in chunks of about 64 KiB: ``meter,start,end,<group_by...>,quantity``."""
    writer = csv.writer(_Line(), lineterminator="\r\n")
    buffer: list[str] = [writer.writerow(["meter", "start", "end", *(csv_cell(g) for g in group_by), "quantity"])]
    size = len(buffer[0])
    rows = usage_rows_stream(customer=customer, start=start, end=end, granularity=granularity, meter=meter,
                             group_by=group_by)
    for row in rows:
        line = writer.writerow([csv_cell(row["meter"]), iso_utc(row["start"]), iso_utc(row["end"]),
                                *(csv_cell(row["group"].get(name)) for name in group_by), csv_cell(row["quantity"])])
        buffer.append(line)
        size += len(line)
        if size >= CHUNK_BYTES:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode()
