"""Raw events partitioned by month (PostgreSQL): the idempotency key stays unique across partitions, every
partition is append-only, months are created ahead by beat, and the migration moves a populated table."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor

from billing.common.auth import Principal
from billing.usage import partitions
from billing.usage.models import EventKey, UsageEvent
from billing.usage.services import events_ingest
from tests.conftest import post_json

ADMIN = Principal(scopes=frozenset({"admin"}))
UTC = timezone.utc


def _partition_of(event_id: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM usage_event WHERE event_id = %s", [event_id])
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_a_reused_event_id_in_another_month_is_still_a_duplicate_or_a_conflict(make_client, acme, tokens_meter,
                                                                               event):
    # given: an event stored with a timestamp of an earlier month (another partition on PostgreSQL)
    api = make_client("ingest")
    now = datetime.now(UTC)
    earlier = (now.replace(day=1) - timedelta(days=20)).isoformat()
    first = event("reused", timestamp=earlier)
    assert post_json(api, "/api/v1/events", first).status_code == 201

    # when: the same id comes again with this month's timestamp, then the same body again
    moved = post_json(api, "/api/v1/events", event("reused", timestamp=now.isoformat()))
    again = post_json(api, "/api/v1/events", first)

    # then: the other body is a 409 conflict, the same body a duplicate, and one row is stored
    assert moved.status_code == 409, moved.content
    assert moved.json()["error"]["code"] == "idempotency_conflict"
    assert again.status_code == 200, again.content
    assert again.json()["status"] == "duplicate"
    assert UsageEvent.objects.filter(event_id="reused").count() == 1
    assert EventKey.objects.filter(event_id="reused").count() == 1


@pytest.mark.postgres
@pytest.mark.django_db
def test_events_are_stored_in_their_month_and_out_of_range_ones_in_the_default_partition(acme, tokens_meter, event):
    now = datetime.now(UTC)
    events_ingest(principal=ADMIN, raw_events=[json.dumps(event(name, timestamp=at.isoformat())).encode()
                                               for name, at in (("now", now), ("old", datetime(2001, 5, 1, tzinfo=UTC)))])

    assert _partition_of("now") == partitions.partition_name(partitions.month_start(now))
    assert _partition_of("old") == partitions.DEFAULT
    assert partitions.default_partition_rows() == 1
    assert UsageEvent.objects.filter(usage_at__lt=datetime(2002, 1, 1, tzinfo=UTC)).count() == 1


@pytest.mark.postgres
@pytest.mark.django_db
def test_every_partition_and_the_key_table_refuse_update_and_delete(acme, tokens_meter, event):
    events_ingest(principal=ADMIN, raw_events=[json.dumps(event("kept")).encode()])
    partition = _partition_of("kept")

    for statement in (f"UPDATE {partition} SET quantity = 1", f"DELETE FROM {partition}",
                      "UPDATE usage_event_key SET usage_at = now()", "DELETE FROM usage_event_key",
                      "UPDATE usage_event SET usage_at = usage_at - interval '40 days'"):
        with pytest.raises(Exception, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
    assert UsageEvent.objects.count() == EventKey.objects.count() == 1


@pytest.mark.postgres
@pytest.mark.django_db
def test_beat_creates_this_month_and_the_next_ones_once():
    far = datetime(2031, 11, 15, tzinfo=UTC)

    first = partitions.partitions_ensure(now=far, ahead=2)
    second = partitions.partitions_ensure(now=far, ahead=2)

    assert [(o.name, o.created, o.error) for o in first] == [
        ("usage_event_y2031m11", True, ""), ("usage_event_y2031m12", True, ""), ("usage_event_y2032m01", True, "")]
    assert [o.created for o in second] == [False, False, False]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'usage_event_y2032m01'")
        assert cursor.fetchone()[0] == "FOR VALUES FROM ('2032-01-01 00:00:00+00') TO ('2032-02-01 00:00:00+00')"


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_month_whose_events_went_to_the_default_partition_is_reported_not_created(acme, tokens_meter, event):
    # given: an event of a month no partition was created for (beat down for months)
    events_ingest(principal=ADMIN, raw_events=[json.dumps(event("stray", timestamp="2003-02-10T00:00:00Z")).encode()])

    outcomes = partitions.partitions_ensure(now=datetime(2003, 2, 1, tzinfo=UTC), ahead=1)

    assert outcomes[0].name == "usage_event_y2003m02"
    assert not outcomes[0].created and "default partition" in outcomes[0].error
    assert outcomes[1].created  # the next month is created all the same
    assert _partition_of("stray") == partitions.DEFAULT


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_reusing_one_id_in_two_months_store_it_once(acme, tokens_meter, event):
    now = datetime.now(UTC)
    bodies = [json.dumps(event("raced", timestamp=at.isoformat(), quantity=str(q))).encode()
              for q, at in ((1, now - timedelta(days=45)), (2, now))] * 4
    barrier = threading.Barrier(len(bodies))

    def run(body: bytes) -> str:
        barrier.wait()
        try:
            return events_ingest(principal=ADMIN, raw_events=[body])[0].status
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        statuses = list(pool.map(run, bodies))

    assert statuses.count("accepted") == 1
    assert UsageEvent.objects.filter(event_id="raced").count() == 1
    assert EventKey.objects.filter(event_id="raced").count() == 1


# --- the migration on a populated table ---------------------------------------------------------------------

BEFORE = [("usage", "0012_meter_definition_frozen")]
OLD_INSERT = (
    "INSERT INTO usage_event (customer_id, project_id, meter_id, event_id, quantity, timestamp, usage_at, received_at, "
    "dimensions, trace, run_id, billable, reason, schema_version, corrects, fingerprint) VALUES "
    "(%s, NULL, %s, %s, %s, %s, %s, %s, '{}', NULL, '', %s, '', 1, '', %s)")


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


@pytest.mark.django_db(transaction=True)
def test_the_migration_moves_stored_events_into_partitions_and_keeps_their_keys(make_client, acme, tokens_meter,
                                                                              event):
    # given: the schema before partitioning, holding events of three months
    months = [datetime(2026, m, 10, tzinfo=UTC) for m in (8, 9, 10)]
    try:
        _migrate(BEFORE)
        with connection.cursor() as cursor:
            for n in range(30):
                at = months[n % 3] + timedelta(hours=n)
                cursor.execute(OLD_INSERT, [acme.pk, tokens_meter.pk, f"old-{n}", str(n + 1), at, at, at, True, f"fp{n}"])
            cursor.execute("SELECT max(id) FROM usage_event")
            last_id = cursor.fetchone()[0]

        # when: migrated to the latest schema
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    finally:
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    # then: every event and its key are there, in its month's partition on PostgreSQL
    assert sorted(UsageEvent.objects.values_list("event_id", flat=True)) == sorted(f"old-{n}" for n in range(30))
    assert EventKey.objects.count() == 30
    if connection.vendor == "postgresql":
        assert {_partition_of(f"old-{n}") for n in range(3)} == {
            "usage_event_y2026m08", "usage_event_y2026m09", "usage_event_y2026m10"}
    # a stored id is still a duplicate or a conflict, a new event takes the next id
    api = make_client("ingest")
    reused = post_json(api, "/api/v1/events", event("old-4", timestamp=datetime.now(UTC).isoformat()))
    assert reused.status_code == 409, reused.content
    assert post_json(api, "/api/v1/events", event("new")).status_code == 201
    assert UsageEvent.objects.get(event_id="new").id > last_id


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_read_of_stored_ids_is_planned_for_each_call_never_kept_prepared(acme, tokens_meter, event):
    # given: stored events, and a session that would use a prepared statement's generic plan at once (a
    # plan kept from when the tables were small and unanalyzed read the customer's every key for each id)
    from billing.usage.ingest import store

    events_ingest(principal=ADMIN, raw_events=[json.dumps(event(f"s-{n}")).encode() for n in range(20)])
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")

    # when: stored ids are read more times than the connection's prepare threshold
    found = [store.stored_columns(acme.pk, [f"s-{n}" for n in range(30)], "billable") for _ in range(6)]

    # then: each read finds the stored ids, and the read was never kept as a prepared statement
    assert all(sorted(f) == sorted((f"s-{n}", True) for n in range(20)) for f in found)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", ["%usage_event_key k JOIN%"])
        assert cursor.fetchone()[0] == 0


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_read_of_stored_ids_looks_each_id_up_in_the_key_index_whatever_the_statistics(acme, tokens_meter, event):
    # given: a customer with stored events and tables never analyzed (the planner's guesses undercount them:
    # a plain "event_id = ANY(ids)" was then checked against every key of the customer, as a filter)
    import psycopg

    from billing.usage.ingest import store

    events_ingest(principal=ADMIN, raw_events=[json.dumps(event(f"s-{n}")).encode() for n in range(50)])
    with connection.cursor() as setup:  # statistics of 50 keys, then keys enough that reading them all is never cheap
        setup.execute("ANALYZE usage_event_key")
        setup.execute("INSERT INTO usage_event_key (customer_id, event_id, event, usage_at) "
                       "SELECT %s, 'g-' || g, 1000000000 + g, now() FROM generate_series(1, 30000) AS g", [acme.pk])
    ids = [f"s-{n}" for n in range(1000)]

    # when: the read is planned
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + store.stored_sql("e.billable"), [ids, acme.pk])
        row = cursor.fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]

    # then: every scan of the key table is an index descent on the customer and the id, never a filter
    def nodes(node):
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    keys = [n for n in nodes(plan) if n.get("Relation Name") == "usage_event_key"]
    assert keys and all(n["Node Type"] == "Index Scan" and "event_id" in n["Index Cond"]
                        and "customer_id" in n["Index Cond"] and "Filter" not in n for n in keys)
