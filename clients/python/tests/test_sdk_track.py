"""track(): batched, retried with the same event_ids through faults, stored exactly once by the real API;
final refusals go to on_error and are never sent again."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sdk_fakes import FaultProxy, Server, stored_ids
from tollgate_client import EventError, Tollgate

FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_max": 0.2, "flush_interval": 0.05}


def client(url: str, key: str, **options: Any) -> Tollgate:
    return Tollgate(base_url=url, api_key=key, **{**FAST, **options})


def test_track_returns_the_event_id_at_once_and_flush_stores_each_event_once(server: Server, proxy: FaultProxy) -> None:
    with client(proxy.url, server.ingest_key, batch_size=50) as tg:
        ids = [tg.track(customer="acme-co", meter="llm_tokens", quantity=i, dimensions={"model": "gpt-4o"},
                        trace={"run_id": "r1", "step": i}) for i in range(120)]
        assert tg.flush(timeout=20)
        assert tg.stats.delivered == 120 and tg.pending() == 0
    assert sorted(stored_ids()) == sorted(ids)
    batches = proxy.sent_ids()
    assert sorted(i for batch in batches for i in batch) == sorted(ids)  # nothing sent twice without a fault
    assert max(len(b) for b in batches) == 50
    listed = server.get("/api/v1/events", customer="acme-co", limit=1000)["data"]
    assert {e["event_id"]: e["quantity"] for e in listed}[ids[7]] == "7"


def test_503_twice_then_accepted_stores_once_with_the_same_event_ids(server: Server, proxy: FaultProxy) -> None:
    proxy.faults = ["503", "503"]
    with client(proxy.url, server.ingest_key) as tg:
        ids = [tg.track(customer="acme-co", meter="llm_tokens", quantity="1.5") for _ in range(3)]
        assert tg.flush(timeout=20)
        assert tg.stats.retries == 2
    attempts = proxy.sent_ids()
    assert len(attempts) == 3 and all(a == ids for a in attempts)
    assert sorted(stored_ids()) == sorted(ids)


def test_a_lost_reply_is_sent_again_and_counted_once(server: Server, proxy: FaultProxy) -> None:
    proxy.faults = ["lose_reply", "reset"]
    with client(proxy.url, server.ingest_key) as tg:
        event_id = tg.track(customer="acme-co", meter="llm_tokens", quantity=10)
        assert tg.flush(timeout=20)
        assert tg.stats.delivered == 1
    assert proxy.sent_ids() == [[event_id]] * 3
    assert stored_ids() == [event_id]
    assert server.get("/api/v1/customers/acme-co/usage", meter="llm_tokens")["data"][0]["quantity"] == "10"


def test_429_waits_at_least_retry_after(server: Server, proxy: FaultProxy) -> None:
    proxy.faults = ["429"]
    proxy.retry_after = "1"
    with client(proxy.url, server.ingest_key) as tg:
        tg.track(customer="acme-co", meter="llm_tokens", quantity=1)
        started = time.monotonic()
        assert tg.flush(timeout=20)
        assert time.monotonic() - started >= 1.0
    assert len(stored_ids()) == 1


def test_refused_events_go_to_on_error_once_and_the_rest_of_the_batch_is_stored(server: Server, proxy: FaultProxy) -> None:
    errors: list[EventError] = []
    with client(proxy.url, server.ingest_key, on_error=errors.append) as tg:
        good = tg.track(customer="acme-co", meter="llm_tokens", quantity=1)
        bad = tg.track(customer="acme-co", meter="no_such_meter", quantity=1)
        assert tg.flush(timeout=20)
        assert tg.stats.failed == 1
    assert [(e.event_id, e.code) for e in errors] == [(bad, "unknown_meter")]
    assert len(proxy.sent_ids()) == 1
    assert stored_ids() == [good]


def test_a_refused_request_is_never_retried_and_each_event_reported(server: Server, proxy: FaultProxy) -> None:
    errors: list[EventError] = []
    with client(proxy.url, "tg_000000000000_wrong", on_error=errors.append) as tg:
        tg.track(customer="acme-co", meter="llm_tokens", quantity=1)
        tg.track(customer="acme-co", meter="llm_tokens", quantity=2)
        assert tg.flush(timeout=20)
    assert [(e.status, e.code) for e in errors] == [(401, "invalid_api_key")] * 2
    assert len(proxy.sent_ids()) == 1 and stored_ids() == []


def test_an_event_over_the_hard_limit_is_a_final_402_for_on_error(server: Server, proxy: FaultProxy, hard_limit: Any) -> None:
    hard_limit("100")
    errors: list[EventError] = []
    with client(proxy.url, server.ingest_key, on_error=errors.append) as tg:
        tg.track(customer="acme-co", meter="llm_tokens", quantity=80)
        over = tg.track(customer="acme-co", meter="llm_tokens", quantity=30)
        assert tg.flush(timeout=20)
    assert len(errors) == 1 and errors[0].event_id == over and errors[0].is_limit
    assert errors[0].code == "quota_exceeded" and errors[0].details["remaining"] == "20"
    assert len(proxy.sent_ids()) == 1


def test_drop_policy_drops_the_newest_and_counts(server: Server, proxy: FaultProxy) -> None:
    proxy.down = True
    tg = client(proxy.url, server.ingest_key, max_queue=5, overflow="drop", flush_interval=30)
    ids = [tg.track(customer="acme-co", meter="llm_tokens", quantity=i) for i in range(8)]
    assert tg.stats.dropped == 3 and tg.pending() == 5
    proxy.down = False
    assert tg.flush(timeout=20)
    tg.close()
    assert sorted(stored_ids()) == sorted(ids[:5])


def test_block_policy_waits_for_room_then_gives_up_after_block_timeout(server: Server, proxy: FaultProxy) -> None:
    proxy.down = True
    tg = client(proxy.url, server.ingest_key, max_queue=2, batch_size=2, block_timeout=0.3)
    tg.track(customer="acme-co", meter="llm_tokens", quantity=1)
    tg.track(customer="acme-co", meter="llm_tokens", quantity=2)
    started = time.monotonic()
    tg.track(customer="acme-co", meter="llm_tokens", quantity=3)  # the queue is full and the server down
    assert time.monotonic() - started >= 0.3 and tg.stats.dropped == 1
    proxy.down = False
    assert tg.flush(timeout=20)
    tg.close()
    assert len(stored_ids()) == 2


def test_close_gives_up_after_its_timeout_and_reports_what_was_lost(server: Server, proxy: FaultProxy) -> None:
    proxy.down = True
    errors: list[EventError] = []
    tg = client(proxy.url, server.ingest_key, on_error=errors.append)
    event_id = tg.track(customer="acme-co", meter="llm_tokens", quantity=1)
    started = time.monotonic()
    tg.close(timeout=0.5)
    assert time.monotonic() - started < 5
    assert [(e.event_id, e.code) for e in errors] == [(event_id, "not_delivered")] and tg.stats.lost == 1
    with pytest.raises(RuntimeError):
        tg.track(customer="acme-co", meter="llm_tokens", quantity=1)
