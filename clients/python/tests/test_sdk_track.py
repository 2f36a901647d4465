"""track(): batched, retried with the same event_ids through faults, stored exactly once by the real API;
final refusals go to on_error and are never sent again."""

from __future__ import annotations

import random
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


def test_faults_are_retried_with_the_same_event_ids_and_each_event_stored_once(server: Server, proxy: FaultProxy) -> None:
    with client(proxy.url, server.ingest_key) as tg:
        # two 503s, then accepted: three attempts, the same ids each time
        proxy.faults = ["503", "503"]
        ids = [tg.track(customer="acme-co", meter="llm_tokens", quantity="1.5") for _ in range(3)]
        assert tg.flush(timeout=20)
        assert tg.stats.retries == 2 and proxy.sent_ids() == [ids] * 3

        # stored, but the answer lost; then the connection reset: the third attempt is a duplicate
        proxy.requests.clear()
        proxy.faults = ["lose_reply", "reset"]
        lost = tg.track(customer="acme-co", meter="llm_tokens", quantity=10)
        assert tg.flush(timeout=20)
        assert proxy.sent_ids() == [[lost]] * 3

        # 429: the next attempt waits at least Retry-After
        proxy.faults, proxy.retry_after = ["429"], "1"
        limited = tg.track(customer="acme-co", meter="llm_tokens", quantity=1)
        started = time.monotonic()
        assert tg.flush(timeout=20)
        assert time.monotonic() - started >= 1.0
        assert tg.stats.delivered == 5 and tg.stats.failed == 0
    assert sorted(stored_ids()) == sorted([*ids, lost, limited])
    usage = server.get("/api/v1/customers/acme-co/usage", meter="llm_tokens", granularity="month")["data"]
    assert usage[0]["quantity"] == "15.5"  # 3 x 1.5 + 10 + 1: nothing counted twice


def test_thousands_of_events_through_random_faults_are_stored_exactly_once(server: Server, proxy: FaultProxy) -> None:
    """A fifth of the requests fail at random (503, 429, reset before, reply lost after storing)."""
    proxy.random_faults = (0.2, random.Random(7))
    proxy.retry_after = "0"
    with client(proxy.url, server.ingest_key, batch_size=100, backoff_base=0.01, backoff_max=0.05) as tg:
        ids = [tg.track(customer="acme-co", meter="llm_tokens", quantity=1) for _ in range(3000)]
        assert tg.flush(timeout=60)
        assert tg.stats.delivered == 3000 and tg.stats.failed == 0 and tg.stats.retries > 0
    faults = [what for _, _, what in proxy.requests]
    assert {"503", "reset", "lose_reply", "429"} <= set(faults)
    stored = stored_ids()
    assert len(stored) == 3000 and set(stored) == set(ids)
    attempts = [i for batch in proxy.sent_ids() for i in batch]
    assert len(attempts) > 3000  # some were sent more than once, and stored once


def test_final_refusals_go_to_on_error_once_and_are_never_sent_again(server: Server, proxy: FaultProxy,
                                                                      hard_limit: Any) -> None:
    hard_limit("100")
    errors: list[EventError] = []
    with client(proxy.url, server.ingest_key, on_error=errors.append) as tg:
        good = tg.track(customer="acme-co", meter="llm_tokens", quantity=80)
        bad = tg.track(customer="acme-co", meter="no_such_meter", quantity=1)
        over = tg.track(customer="acme-co", meter="llm_tokens", quantity=30)  # 20 left of the hard limit
        unencodable = tg.track(customer="acme-co", meter="llm_tokens", quantity=1, trace={"agent": object()})
        assert tg.flush(timeout=20)
        assert tg.stats.failed == 3 and tg.stats.delivered == 1
    assert errors[0].event_id == unencodable and errors[0].code == "invalid_event"  # left out, never sent
    errors.pop(0)
    assert [(e.event_id, e.code) for e in errors] == [(bad, "unknown_meter"), (over, "quota_exceeded")]
    assert errors[1].is_limit and errors[1].details["remaining"] == "20" and not errors[0].is_limit
    assert len(proxy.sent_ids()) == 1
    assert stored_ids().count(good) == 1

    # a whole request refused (a wrong key): each of its events reported, the request never retried
    errors.clear()
    proxy.requests.clear()
    with client(proxy.url, "tg_000000000000_wrong", on_error=errors.append) as tg:
        tg.track(customer="acme-co", meter="llm_tokens", quantity=1)
        tg.track(customer="acme-co", meter="llm_tokens", quantity=2)
        assert tg.flush(timeout=20)
    assert [(e.status, e.code) for e in errors] == [(401, "invalid_api_key")] * 2
    assert len(proxy.sent_ids()) == 1


def test_back_pressure_drop_counts_the_newest_and_block_waits_then_gives_up(server: Server, proxy: FaultProxy) -> None:
    proxy.down = True
    dropping = client(proxy.url, server.ingest_key, max_queue=5, overflow="drop", flush_interval=30)
    ids = [dropping.track(customer="acme-co", meter="llm_tokens", quantity=i) for i in range(8)]
    assert dropping.stats.dropped == 3 and dropping.pending() == 5

    blocking = client(proxy.url, server.ingest_key, max_queue=2, batch_size=2, block_timeout=0.3)
    blocked = [blocking.track(customer="acme-co", meter="llm_tokens", quantity=i) for i in range(2)]
    started = time.monotonic()
    blocking.track(customer="acme-co", meter="llm_tokens", quantity=3)  # the queue is full and the server down
    assert time.monotonic() - started >= 0.3 and blocking.stats.dropped == 1

    proxy.down = False
    assert dropping.flush(timeout=20) and blocking.flush(timeout=20)
    dropping.close()
    blocking.close()
    assert sorted(stored_ids()) == sorted(ids[:5] + blocked)


def test_close_gives_up_after_its_timeout_and_reports_what_was_lost(server: Server, proxy: FaultProxy) -> None:
    proxy.down = True
    errors: list[EventError] = []
    tg = client(proxy.url, server.ingest_key, on_error=errors.append, batch_size=2)
    ids = [tg.track(customer="acme-co", meter="llm_tokens", quantity=1) for _ in range(5)]  # a batch out, three waiting
    started = time.monotonic()
    tg.close(timeout=0.5)
    assert time.monotonic() - started < 5
    assert sorted(e.event_id for e in errors) == sorted(ids) and {e.code for e in errors} == {"not_delivered"}
    assert tg.stats.lost == 5 and tg.pending() == 0
    with pytest.raises(RuntimeError):
        tg.track(customer="acme-co", meter="llm_tokens", quantity=1)
