from __future__ import annotations

from typing import Any, NoReturn

from django.db import models

from billing.catalog.models import Meter
from billing.common.fields import ExactDecimalField
from billing.customers.models import Customer, Project


class AppendOnlyError(Exception):
    """Raised on any attempt to change or delete a stored usage event."""


class UsageEventQuerySet(models.QuerySet["UsageEvent"]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("Usage events are append-only: send a correction event instead.")

    def delete(self) -> NoReturn:
        raise AppendOnlyError("Usage events are append-only: they are never deleted.")


class UsageEvent(models.Model):
    """One usage event exactly as accepted. Append-only: no code path updates or deletes a row,
    and on PostgreSQL a trigger refuses UPDATE and DELETE (migration 0002, on every partition).

    On PostgreSQL the table is partitioned by month of ``usage_at`` (migration 0014,
    ``billing.usage.partitions``): its primary key is (id, usage_at), and the unique (customer, event_id)
    lives in ``EventKey``, written by the same statement. The model keeps ``id`` as its key: ids come
    from one sequence and are unique across partitions.

    ``usage_at`` is the hour the quantity counts in: the event's own ``timestamp``, or for a
    correction the timestamp of the event it corrects. ``fingerprint`` is a digest of the
    normalised body: the same ``event_id`` with the same fingerprint is a duplicate, with another one
    a conflict (409).
    """

    # No foreign-key constraints in the database (``db_constraint=False``), on purpose: PostgreSQL checked
    # each key of each row with a query at commit, which in a limited batch ran while it held the
    # customer's ledger accounts (docs/performance.md). What they
    # guarded stays guarded: ingest resolves every key in the same request, and the rows they point to are
    # never deleted (no service deletes a customer, project or meter; the ORM's PROTECT refuses it).
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+", db_index=False,
                                 db_constraint=False)
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                db_index=False, db_constraint=False)
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+", db_index=False, db_constraint=False)
    event_id = models.CharField(max_length=128)
    quantity = ExactDecimalField()
    timestamp = models.DateTimeField()
    usage_at = models.DateTimeField()
    received_at = models.DateTimeField()
    dimensions = models.JSONField(default=dict, blank=True)
    trace = models.JSONField(null=True, blank=True)
    run_id = models.CharField(max_length=128, blank=True, default="")
    billable = models.BooleanField(default=True)
    reason = models.CharField(max_length=64, blank=True, default="")
    schema_version = models.PositiveSmallIntegerField(default=1)
    corrects = models.CharField(max_length=128, blank=True, default="")
    fingerprint = models.CharField(max_length=32)

    objects = UsageEventQuerySet.as_manager()

    class Meta:
        db_table = "usage_event"
        indexes = [
            models.Index(fields=["customer", "meter", "usage_at"], name="usage_event_cust_meter_at"),
            models.Index(fields=["customer", "usage_at"], condition=~models.Q(corrects=""), name="usage_event_corrections"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id}:{self.event_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("Usage events are append-only: send a correction event instead.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("Usage events are append-only: they are never deleted.")


class EventKey(models.Model):
    """The idempotency key of every stored event, (customer, event_id), unique in the database: the
    row's primary key. Apart from the event table because PostgreSQL requires the partition key in every
    unique index of a partitioned table, and a unique (customer, event_id, usage_at) would let a reused id
    with another timestamp through in another month. Ingest inserts the key and the event in one
    statement (``ON CONFLICT DO NOTHING`` here decides which events are new); ``event`` and ``usage_at``
    lead to the event's row in its partition. Append-only like the events (a trigger on PostgreSQL)."""

    pk = models.CompositePrimaryKey("customer_id", "event_id")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+", db_index=False,
                                 db_constraint=False)
    event_id = models.CharField(max_length=128)
    event = models.BigIntegerField()  # UsageEvent.id
    usage_at = models.DateTimeField()  # the event's partition key

    class Meta:
        db_table = "usage_event_key"

    def __str__(self) -> str:
        return f"{self.customer_id}:{self.event_id}"


class Aggregates(models.Model):
    """What every aggregation needs, as a rollup row holds it: sum (sum and count meters), event count,
    max, the distinct ``unique_by`` values, and the latest value with its time and event id."""

    total = ExactDecimalField()
    events = models.PositiveIntegerField()
    maximum = ExactDecimalField(null=True)
    uniques = models.JSONField(default=list)
    latest_value = ExactDecimalField(null=True)
    latest_at = models.DateTimeField(null=True)
    latest_event = models.BigIntegerField(null=True)

    class Meta:
        abstract = True


class HourlyRollup(Aggregates):
    """Billable usage per (customer, project, meter, dimension set, hour), derived from raw events and
    always recomputable from them (``manage.py rollup --full``, ``--check``). Holds what every
    aggregation needs: sum (sum and count meters), event count, max, the distinct ``unique_by`` values,
    and the latest value with its time and event id."""

    # No database FK constraints and no per-column FK indexes: every row is derived from usage_event rows,
    # whose own constraints hold these ids; per-row constraint triggers and two more indexes to maintain
    # would cost the rollup writes more than the aggregation. Every read goes by the unique key, which
    # starts with (customer, meter, hour) for the invoices' range reads.
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+", db_index=False,
                                 db_constraint=False)
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                db_constraint=False, db_index=False)
    project_slot = models.PositiveBigIntegerField(default=0)  # project id or 0: part of the unique key
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+", db_constraint=False,
                              db_index=False)
    dims_key = models.CharField(max_length=32)  # digest of the canonical dimensions: a DimensionSet's key
    hour = models.DateTimeField()

    class Meta:
        db_table = "usage_hourly_rollup"
        # The only index besides the primary key. On PostgreSQL it also carries ``total`` (INCLUDE, made by
        # migration 0010, kept by the rebuild, which restores indexes from their own definitions), so an
        # invoice sums a customer's hours per dimension set from the index alone. The INCLUDE is not
        # declared here: declared, Django would skip the whole constraint on SQLite (no covering indexes).
        constraints = [
            models.UniqueConstraint(fields=["customer", "meter", "hour", "project_slot", "dims_key"],
                                    name="rollup_unique_key"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id}/{self.meter_id}/{self.hour:%Y-%m-%d %H}h"


class DailyRollup(Aggregates):
    """The hourly rollups summed per (customer, meter, dimension set, UTC day), across projects: what an
    invoice reads for its whole days (a month is ~30 rows per dimension set instead of ~720). Maintained
    with the hourly rows in the same transactions, recomputable and checked the same way."""

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+", db_index=False,
                                 db_constraint=False)
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+", db_constraint=False,
                              db_index=False)
    dims_key = models.CharField(max_length=32)
    day = models.DateTimeField()  # 00:00 UTC

    class Meta:
        db_table = "usage_daily_rollup"
        constraints = [  # with INCLUDE (total) on PostgreSQL, as the hourly key
            models.UniqueConstraint(fields=["customer", "meter", "day", "dims_key"], name="daily_rollup_key"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id}/{self.meter_id}/{self.day:%Y-%m-%d}"


class DimensionSet(models.Model):
    """A dimension set of the rollups, once: its key is the digest of the canonical dimensions
    (``rollups.dims_key``), so a key always names the same set and rows are only ever added. The rollup
    rows hold the 32-character key alone (a rebuild then neither stores nor digests a ``jsonb`` per row).
    Written by the rollup runs before the rows that use a key, in the same transaction."""

    key = models.CharField(max_length=32, primary_key=True)
    dimensions = models.JSONField()

    class Meta:
        db_table = "usage_dimension_set"

    def __str__(self) -> str:
        return f"{self.key}: {self.dimensions}"


class RollupWatermark(models.Model):
    """How far the incremental rollup has read the raw events (by id)."""

    name = models.CharField(max_length=32, unique=True)
    last_event_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name}: {self.last_event_id}"
