"""Exactly once under concurrency and arbitrary retry interleavings; append-only in the database."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.common.auth import Principal
from billing.customers.services import customer_create
from billing.usage.models import UsageEvent
from billing.usage.services import events_ingest
from tests.conftest import stored_rows

ADMIN = Principal(scopes=frozenset({"admin"}))
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_fifty_threads_posting_the_same_event_store_one_row(live_server, make_client, acme, tokens_meter, event):
    key = make_client("ingest").raw_key
    body = json.dumps(event("raced"))
    barrier = threading.Barrier(50)

    def post(_: int) -> int:
        barrier.wait()
        for _attempt in range(20):  # the test server's listen backlog is small: a refused connect is retried,
            try:                   # exactly what a real client does
                with httpx.Client(base_url=live_server.url, timeout=30) as client:
                    return client.post("/api/v1/events", content=body, headers={
                        "Authorization": f"Bearer {key}", "Content-Type": "application/json"}).status_code
            except httpx.TransportError:
                continue
        raise AssertionError("no answer after 20 attempts")

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(post, range(50)))

    assert set(statuses) <= {200, 201}
    assert statuses.count(201) <= 1  # (a 201 whose reply was lost would be followed by a 200 on retry)
    assert UsageEvent.objects.filter(event_id="raced").count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_with_overlapping_ids_store_each_event_once(acme, tokens_meter, event):
    events = [json.dumps(event(f"e{i}", quantity=str(i))).encode() for i in range(300)]
    batches = [events[i:i + 150] for i in (0, 50, 100, 150)] * 2  # every id in at least two batches

    def run(batch: list[bytes]) -> list[str]:
        try:
            return [r.status for r in events_ingest(principal=ADMIN, raw_events=batch)]
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [status for statuses in pool.map(run, batches) for status in statuses]

    assert results.count("accepted") == 300
    assert "rejected" not in results
    assert UsageEvent.objects.count() == 300


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_batches_sending_the_same_new_ids_in_opposite_orders_never_deadlock(acme, tokens_meter, event, monkeypatch):
    # given pairs of batches of the same 1,000 new ids, one of each pair in reverse order, inserted at
    # the same moment (a barrier right before each insert), and no retry after a deadlock
    import billing.usage.ingest.store as ingest_services

    monkeypatch.setattr(ingest_services, "retrying_deadlocks", lambda write: write())
    real_insert = ingest_services.insert_rows
    barrier = threading.Barrier(2)

    def insert_together(*args, **kwargs):
        barrier.wait(timeout=30)
        return real_insert(*args, **kwargs)

    monkeypatch.setattr(ingest_services, "insert_rows", insert_together)

    def run(batch: list[bytes]) -> list[str]:
        try:
            return [r.status for r in events_ingest(principal=ADMIN, raw_events=batch)]
        finally:
            connection.close()

    # when they are sent, then none was rolled back to break a deadlock (that would raise here): rows go
    # in in (customer, event_id) order whatever the batch's order
    for round_ in range(5):
        events = [json.dumps(event(f"r{round_}-{i:04}")).encode() for i in range(1000)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = [status for statuses in pool.map(run, [events, events[::-1]]) for status in statuses]
        assert sorted(set(results)) == ["accepted", "duplicate"] and results.count("accepted") == 1000
    assert UsageEvent.objects.count() == 5000


@pytest.mark.django_db
def test_stored_ids_follow_the_batch_order(acme, tokens_meter, event):
    # given a batch whose event ids are not in sorted order
    order = ["zeta", "alpha", "mu", "beta"]

    # when it is stored
    events_ingest(principal=ADMIN, raw_events=[json.dumps(event(name)).encode() for name in order])

    # then the row ids follow the batch (a ``latest`` meter breaks ties of one instant by them)
    assert list(UsageEvent.objects.order_by("id").values_list("event_id", flat=True)) == order


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgresql_itself_refuses_update_and_delete_of_raw_events(acme, tokens_meter, event):
    events_ingest(principal=ADMIN, raw_events=[json.dumps(event()).encode()])

    for statement in ("UPDATE usage_event SET quantity = 1", "DELETE FROM usage_event"):
        with pytest.raises(Exception, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
    assert UsageEvent.objects.count() == 1


# --- property: any interleaving of retries and duplicates leaves the same stored set ------------------

def _body(customer: str, event_id: str, quantity: int, variant: int) -> bytes:
    return json.dumps({
        "event_id": event_id, "customer": customer, "meter": "llm_tokens",
        "quantity": str(quantity + variant),  # variant 0: the original body; >0: a conflicting retry
        "timestamp": (T0 + timedelta(minutes=quantity)).isoformat(),
    }).encode()


deliveries = st.lists(
    st.tuples(st.integers(0, 14), st.integers(0, 1)),  # (event index, 0 = same body / 1 = other body)
    min_size=1, max_size=60,
)


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=deliveries, batch_size=st.integers(1, 7), data=st.data())
def test_any_interleaving_of_retries_and_duplicates_stores_the_same_set(acme, tokens_meter, order, batch_size, data):
    customer = customer_create(external_id=f"prop-{uuid.uuid4().hex[:12]}", name="p")  # a fresh tenant per example
    # The reference: each event id first delivered with some body; that first body must win.
    first_body: dict[str, bytes] = {}
    stream = []
    for index, variant in order:
        body = _body(customer.external_id, f"e{index}", index, variant)
        first_body.setdefault(f"e{index}", body)
        stream.append(body)
    # Deliver as random batches, then retry a random subset of everything again.
    retries = data.draw(st.lists(st.sampled_from(stream), max_size=20))
    statuses = []
    for chunk_start in range(0, len(stream + retries), batch_size):
        chunk = (stream + retries)[chunk_start:chunk_start + batch_size]
        statuses += [r.status for r in events_ingest(principal=ADMIN, raw_events=chunk, now=T0 + timedelta(days=1))]

    stored = {e.event_id: str(e.quantity) for e in UsageEvent.objects.filter(customer=customer)}
    expected = {eid: json.loads(body)["quantity"] for eid, body in first_body.items()}
    assert stored == expected
    assert statuses.count("accepted") == len(expected)
    for body, status in zip(stream + retries, statuses, strict=True):
        same = body == first_body[json.loads(body)["event_id"]]
        assert status in (("accepted", "duplicate") if same else ("rejected",))
    assert sum(1 for row in stored_rows() if row[0] == str(customer.pk)) == len(expected)
