"""reserve() as a context manager against the real API: the hold shows in the balance, settle posts the actual
usage, an exception or a missing settle releases it, a 402 raises LimitExceeded with the contract's code."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sdk_fakes import FaultProxy, Server, stored_ids
from tollgate_client import APIError, LimitExceeded, Tollgate

FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_max": 0.2, "flush_interval": 0.05}


def quota(tg: Tollgate) -> dict[str, Any]:
    rows = [q for q in tg.balance("acme-co")["quotas"] if q["meter"] == "llm_tokens"]
    assert len(rows) == 1
    return rows[0]


@pytest.fixture
def tg(server: Server, proxy: FaultProxy, hard_limit: Any) -> Any:
    hard_limit("10000")
    with Tollgate(base_url=proxy.url, api_key=server.admin_key, **FAST) as client:  # admin: events and reads
        yield client


def test_reserve_holds_then_settle_posts_the_actual_usage_and_releases_the_rest(tg: Tollgate) -> None:
    with tg.reserve(customer="acme-co", meter="llm_tokens", quantity=4000) as r:
        assert Decimal(quota(tg)["reserved"]) == 4000
        answer = r.settle(quantity=3120, dimensions={"model": "gpt-4o"}, trace={"run_id": "r1"})
        assert answer["accepted"] == 1 and r.state == "settled"
    after = quota(tg)
    assert Decimal(after["used"]) == 3120 and Decimal(after["reserved"]) == 0
    assert Decimal(after["remaining"]) == 10000 - 3120
    assert len(stored_ids()) == 1


def test_an_exception_inside_or_a_missing_settle_releases_the_hold(tg: Tollgate) -> None:
    with pytest.raises(ZeroDivisionError), tg.reserve(customer="acme-co", meter="llm_tokens", quantity=4000) as r:
        assert Decimal(quota(tg)["reserved"]) == 4000
        _ = 1 / 0
    assert r.state == "released"
    assert Decimal(quota(tg)["reserved"]) == 0 and Decimal(quota(tg)["used"]) == 0
    with tg.reserve(customer="acme-co", meter="llm_tokens", quantity=500) as r2:
        assert Decimal(quota(tg)["reserved"]) == 500
    assert r2.state == "released" and Decimal(quota(tg)["reserved"]) == 0


def test_settle_retried_through_faults_is_idempotent(tg: Tollgate, proxy: FaultProxy) -> None:
    proxy.faults = ["503", "lose_reply"]  # the reservation POST: 503, then stored but the answer lost
    with tg.reserve(customer="acme-co", meter="llm_tokens", quantity=100) as r:
        proxy.faults = ["lose_reply"]  # the settle is applied, its answer lost: the retry is a duplicate
        answer = r.settle(events=[{"quantity": 40, "dimensions": {"direction": "input"}},
                                  {"quantity": 2, "dimensions": {"direction": "output"}}])
        assert answer["duplicates"] == 2
    assert Decimal(quota(tg)["used"]) == 42 and Decimal(quota(tg)["reserved"]) == 0
    assert len(stored_ids()) == 2


def test_limit_exceeded_and_the_read_helpers(tg: Tollgate) -> None:
    with pytest.raises(LimitExceeded) as caught, tg.reserve(customer="acme-co", meter="llm_tokens", quantity=20000):
        pytest.fail("the body must not run")
    assert caught.value.status == 402 and caught.value.code == "quota_exceeded"
    assert caught.value.details["remaining"] == "10000" and caught.value.message

    r = tg.reserve(customer="acme-co", meter="llm_tokens", quantity=10)
    with pytest.raises(APIError) as refused:
        r.settle(events=[{"meter": "nope", "quantity": 1}])  # the server settles, refusing that event: it raises
    assert refused.value.code == "unknown_meter" and r.state == "settled"
    assert Decimal(quota(tg)["reserved"]) == 0

    tg.track(customer="acme-co", meter="llm_tokens", quantity=7, dimensions={"model": "m1"})
    assert tg.flush(timeout=20)
    rows = tg.usage("acme-co", meter="llm_tokens", group_by=["model"], granularity="month")["data"]
    assert [(r["group"], r["quantity"]) for r in rows] == [({"model": "m1"}, "7")]
    with pytest.raises(APIError) as missing:
        tg.balance("nobody")
    assert missing.value.status == 404 and missing.value.code == "not_found"
    assert not isinstance(missing.value, LimitExceeded)


def test_a_reservation_names_its_run_and_a_killed_run_is_refused(tg: Tollgate) -> None:
    killed = tg.request("POST", "/api/v1/customers/acme-co/runs/agent-9/kill", {})
    assert killed["state"] == "killed"
    with pytest.raises(LimitExceeded) as caught, tg.reserve(customer="acme-co", meter="llm_tokens", quantity=10,
                                                            run_id="agent-9"):
        pytest.fail("the body must not run")
    assert caught.value.code == "circuit_open"
    with tg.reserve(customer="acme-co", meter="llm_tokens", quantity=10, run_id="agent-10") as r:
        r.settle(quantity=10)
    assert r.state == "settled"
