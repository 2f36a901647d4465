"""The CSV of a customer with 1,000,000 events streams with bounded memory (PostgreSQL)."""

from __future__ import annotations

import csv
import io
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from django.db import connection

from billing.usage.models import UsageEvent

pytestmark = [pytest.mark.django_db, pytest.mark.postgres, pytest.mark.slow]
EVENTS = 1_000_000
MONTH = datetime(2026, 10, 1, tzinfo=timezone.utc)
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet")
COLUMNS = ("customer_id", "project_id", "meter_id", "event_id", "quantity", "timestamp", "usage_at", "received_at",
           "dimensions", "trace", "run_id", "billable", "reason", "schema_version", "corrects", "fingerprint")


def copy_events(customer_pk: int, project_pks: list[int], meter_pk: int) -> int:
    """1,000,000 raw events over October 2026 through COPY (the fast path; the ingest API is not under test)."""
    step = timedelta(days=31) / EVENTS
    received = datetime.now(timezone.utc)
    total = 0
    connection.ensure_connection()
    with connection.connection.cursor() as cursor, cursor.copy(
            f"COPY {UsageEvent._meta.db_table} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
        for i in range(EVENTS):
            at = MONTH + step * i
            quantity = 1 + i % 97
            total += quantity
            copy.write_row((customer_pk, project_pks[i % 2], meter_pk, f"big-{i}", quantity, at, at, received,
                            f'{{"model": "{MODELS[i % 3]}"}}', None, f"run-{i // 50}", True, "", 1, "", "0" * 32))
    return total


class PeakMemory:
    """Peak resident memory of this process while the block runs: the kernel's high-water mark (VmHWM),
    reset on entry through /proc/self/clear_refs (no slowdown, and it sees psycopg's C buffers too).
    Where that reset is refused, tracemalloc's peak of Python allocations (several times slower)."""

    def __enter__(self) -> PeakMemory:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.kind, self.base = "rss", self._rss("VmRSS")
        except OSError:
            self.kind = "tracemalloc"
            tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "rss":
            self.peak = self._rss("VmHWM") - self.base
        else:
            self.peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    @staticmethod
    def _rss(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(field)


def test_a_million_events_stream_with_bounded_memory(make_client, acme, tokens_meter):
    # given
    projects = [acme.projects.create(key="chatbot").pk, acme.projects.create(key="agent").pk]
    t0 = time.monotonic()
    expected_total = copy_events(acme.pk, projects, tokens_meter.pk)
    inserted = time.monotonic() - t0
    reader = make_client("read", customer=acme)

    # when: read the whole export chunk by chunk, keeping only running figures
    t1 = time.monotonic()
    memory = PeakMemory()
    with memory:
        response = reader.get("/api/v1/customers/acme-co/usage.csv", {
            "start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z", "granularity": "hour",
            "group_by": "model,project"})
        assert response.status_code == 200 and response.streaming
        rows, total, chunks, header, tail = 0, 0, 0, None, ""
        for chunk in response.streaming_content:
            chunks += 1
            text = tail + chunk.decode()
            lines = text.split("\r\n")
            tail = lines.pop()
            for record in csv.reader(io.StringIO("\r\n".join(lines))):
                if header is None:
                    header = record
                    continue
                rows += 1
                total += int(record[-1])
    peak = memory.peak
    streamed = time.monotonic() - t1

    # then: every event counted once, in many chunks, with a peak far below the data's size
    assert tail == ""
    assert header == ["meter", "start", "end", "model", "project", "quantity"]
    assert rows == 31 * 24 * 6
    assert total == expected_total
    assert chunks > 1
    # 1,000,000 events as Python rows would take hundreds of MB; one window (a day, ~32,000 events, read
    # 5,000 at a time) and the current CSV chunk take a few MB;
    # the bound leaves room for the allocator and psycopg's buffers
    assert peak < 64 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB ({memory.kind})"
    print(f"\n1M events: COPY {inserted:.1f}s, CSV {streamed:.1f}s, {chunks} chunks, peak {peak / 1e6:.1f} MB ({memory.kind})")
