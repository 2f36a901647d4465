"""The raw event table's monthly partitions (PostgreSQL; migration 0014 made usage_event a table partitioned by
month of ``usage_at``). Beat creates this month's and the next ``TOLLGATE_EVENT_PARTITIONS_AHEAD`` months'
ahead of their first event; any instant without a month of its own (a backfill from before the first month,
or a month beat never created) is stored in the default partition, so ingest never fails for want of one.
On SQLite the table is a plain one and there is nothing to do."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from django.db import DatabaseError, connection, transaction

log = logging.getLogger(__name__)

PARENT = "usage_event"
DEFAULT = "usage_event_default"
# Creating a partition locks the parent for a moment; behind a long reader it would queue every insert
# after it: give up after this, and try again on the next run.
LOCK_TIMEOUT = "5s"


@dataclass(frozen=True)
class MonthOutcome:
    name: str
    created: bool
    error: str = ""


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(timezone.utc)
    return datetime(moment.year, moment.month, 1, tzinfo=timezone.utc)


def month_after(month: datetime, n: int = 1) -> datetime:
    index = month.month - 1 + n
    return datetime(month.year + index // 12, index % 12 + 1, 1, tzinfo=timezone.utc)


def partition_name(month: datetime) -> str:
    return f"{PARENT}_y{month:%Y}m{month:%m}"


def partitioned() -> bool:
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)", [PARENT])
        row = cursor.fetchone()
    return bool(row and row[0])


def partitions_ensure(*, now: datetime, ahead: int) -> list[MonthOutcome]:
    """This month's partition and the next ``ahead`` months', those missing created; idempotent (one run
    at a time: an advisory lock). A month whose events already went to the default partition cannot be
    created over them (PostgreSQL refuses): reported as an error and left there, still read and billed
    (docs/scaling.md says how to move them)."""
    if not partitioned():
        return []
    outcomes = []
    first = month_start(now)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('tollgate:usage_event_partitions'))")
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        for n in range(ahead + 1):
            month = month_after(first, n)
            name = partition_name(month)
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
            if cursor.fetchone()[0]:
                outcomes.append(MonthOutcome(name, created=False))
                continue
            try:
                with transaction.atomic():
                    cursor.execute(f"CREATE TABLE {name} PARTITION OF {PARENT} FOR VALUES FROM (%s) TO (%s)",
                                   [month, month_after(month)])
            except DatabaseError as error:
                outcomes.append(MonthOutcome(name, created=False, error=str(error).strip()))
                continue
            outcomes.append(MonthOutcome(name, created=True))
    return outcomes


def default_partition_rows() -> int:
    """Events in the default partition: zero while beat keeps the months ahead and no backfill predates them."""
    if not partitioned():
        return 0
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {DEFAULT}")  # noqa: S608 - constant
        return int(cursor.fetchone()[0])
