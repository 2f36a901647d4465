"""Hard limits per meter aggregation (contract: "Limits per aggregation"): ``max`` and ``latest`` bound each
event, ``unique_count`` the period's distinct values, decided by the same engine as totals, in both ways
ingest books the ledger; and the way a ledger outside the database gets a contended batch through."""

from __future__ import annotations

import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest

from billing.catalog.models import Meter
from billing.common.calendar import period_key
from billing.guardrails import accounts as acc
from billing.usage.models import UsageEvent
from billing.usage.services import events_ingest
from ledger.backends import get_ledger
from tests import factories
from tests.billing.guardrails.test_limits_at_ingest import ADMIN, AT, subscribe
from tests.conftest import post_json

pytestmark = [pytest.mark.ledger, pytest.mark.usefixtures("debit_mode")]


RETRY = {"unavailable", "ledger_unavailable"}  # answered 503 with Retry-After: sent again by a client


def plan(aggregation: str, hard: int) -> str:
    meter = {"key": "agents", "name": "Agents", "unit": "agent", "aggregation": aggregation}
    if aggregation == "unique_count":
        meter["unique_by"] = "agent_id"
    return factories.metered(price="1", hard=str(hard), meter=meter)


def event(event_id: str, quantity: str = "1", agent: str | None = None) -> bytes:
    dimensions = {"agent_id": agent} if agent is not None else {}
    return json.dumps({"event_id": event_id, "customer": "acme-co", "meter": "agents", "quantity": quantity,
                       "timestamp": AT.isoformat(), "dimensions": dimensions}).encode()


def outcomes(raw: list[bytes]) -> list[str]:
    return [r.status if r.error is None else r.error.code for r in events_ingest(principal=ADMIN, raw_events=raw)]


@pytest.mark.django_db
@pytest.mark.parametrize("aggregation", ["max", "latest"])
def test_a_limit_on_a_max_or_latest_meter_refuses_each_event_above_it_and_nothing_else(acme, aggregation):
    # given a hard limit of 100 on a max (or latest) meter
    subscribe(acme, plan(aggregation, 100))

    # when events of 80, 100, 101 and 50 arrive, then 90 more in another batch
    first = outcomes([event("a", "80"), event("b", "100"), event("c", "101"), event("d", "50")])
    second = outcomes([event("e", "90")])

    # then only the event above the limit is refused: the quantities are not summed into a quota
    assert first == ["accepted", "accepted", "quota_exceeded", "accepted"]
    assert second == ["accepted"]
    refused = UsageEvent.objects.get(event_id="c")
    assert (refused.billable, refused.reason) == (False, "rejected_quota_exceeded")


@pytest.mark.django_db
def test_the_402_of_a_max_meter_names_the_limit_as_what_remains(acme, ingest):
    subscribe(acme, plan("max", 100))

    response = post_json(ingest, "/api/v1/events", json.loads(event("big", "250")))

    error = response.json()["error"]
    assert response.status_code == 402 and error["code"] == "quota_exceeded"
    assert (error["remaining"], error["unit"]) == ("100", "agent")


@pytest.mark.django_db
def test_a_unique_count_limit_counts_each_value_once_and_always_passes_a_counted_one(acme):
    # given a limit of 3 distinct agents a period
    subscribe(acme, plan("unique_count", 3))

    # when a batch repeats agents, then a fourth one comes, then counted ones come back in a later batch
    first = outcomes([event("1", agent="a1"), event("2", agent="a2"), event("3", "5", agent="a1"),
                      event("4", agent="a3"), event("5", agent="a4"), event("6", agent="a2"), event("7")])
    second = outcomes([event("8", agent="a1"), event("9", agent="a5"), event("10", "7", agent="a3")])

    # then only the values beyond the third are refused; a repeated value never is, nor an event without one
    assert first == ["accepted", "accepted", "accepted", "accepted", "quota_exceeded", "accepted", "accepted"]
    assert second == ["accepted", "quota_exceeded", "accepted"]
    # and the quota holds exactly the three values
    meter = Meter.objects.get(key="agents")
    quota = get_ledger().lookup_accounts([acc.Ids(acme.pk).quota(meter.pk, period_key(AT))])
    assert acc.units_to_qty(next(iter(quota.values())).debits_posted) == 3


@pytest.mark.django_db
def test_a_retried_unique_count_event_is_not_counted_again(acme):
    subscribe(acme, plan("unique_count", 2))

    assert outcomes([event("1", agent="a1")]) == ["accepted"]
    assert outcomes([event("1", agent="a1"), event("2", agent="a2")]) == ["duplicate", "accepted"]
    assert outcomes([event("3", agent="a3")]) == ["quota_exceeded"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_eight_threads_count_exactly_the_limits_distinct_values(acme):
    # given a limit of 3 distinct agents and 8 threads sending events for 6 agents in their own orders
    subscribe(acme, plan("unique_count", 3))
    agents = [f"agent-{n}" for n in range(6)]
    barrier = threading.Barrier(8)

    def work(n: int) -> list[tuple[str, str]]:
        rng = random.Random(n)
        mine = [rng.choice(agents) for _ in range(12)]
        barrier.wait()
        out = []
        for start in range(0, 12, 3):
            raw = [event(f"t{n}-{i}", agent=a) for i, a in enumerate(mine[start:start + 3], start)]
            answered = outcomes(raw)
            while any(getattr(o, "value", o) in RETRY for o in answered):  # 503: sent again, as a client is told
                answered = outcomes(raw)
            out += list(zip(mine[start:start + 3], answered, strict=True))
        from django.db import connection

        connection.close()
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [r for part in pool.map(work, range(8)) for r in part]

    # then exactly three agents were ever accepted, every event of theirs was, and none of the others'
    accepted = {agent for agent, outcome in results if outcome == "accepted"}
    assert len(accepted) == 3
    assert all((outcome == "accepted") == (agent in accepted) for agent, outcome in results), results
    assert {outcome for _, outcome in results} == {"accepted", "quota_exceeded"}


@pytest.mark.django_db
def test_a_new_value_is_not_refused_for_room_a_booking_in_flight_holds_then_gives_back(acme, debit_mode,
                                                                                        monkeypatch):
    # given a limit of 3 distinct agents, two counted, and a third being counted by a booking in flight:
    # its holds placed (the quota full as read), its insert about to fail (a deadlock: the holds voided)
    from billing.guardrails.limits import BatchDebit, EventUsage
    from billing.usage.ingest import debit
    from ledger import holds

    if debit_mode == "together":
        pytest.skip("a ledger in the database books in the insert's transaction: nothing is held in flight")
    subscribe(acme, plan("unique_count", 3))
    assert outcomes([event("1", agent="a1"), event("2", agent="a2")]) == ["accepted", "accepted"]
    meter = Meter.objects.get(key="agents")
    in_flight = BatchDebit([EventUsage(key=0, customer_pk=acme.pk, event_id="x", meter=meter, quantity=Decimal(1),
                                       usage_at=AT, dimensions={"agent_id": "a3"})], lock=False)
    assert in_flight.decide() == {}
    held = holds.holds_of(in_flight.booking()[0], "in-flight")
    assert holds.place(get_ledger(), held)
    tries = []

    def back_off(n: int) -> None:  # the booking in flight fails meanwhile and gives its room back
        tries.append(n)
        holds.void(get_ledger(), held)

    monkeypatch.setattr(debit, "_back_off", back_off)

    # when a fourth agent comes while the third's holds take the last unit, then the third agent comes
    fourth = outcomes([event("3", agent="a4")])
    third = outcomes([event("4", agent="a3")])

    # then the fourth is decided again once the holds are gone, not refused on them, and counted; the
    # third, whose booking failed, is refused: one answer per value
    assert tries == [0]
    assert fourth == ["accepted"] and third == ["quota_exceeded"]


@pytest.mark.django_db
def test_a_reservation_on_a_max_meter_is_refused_above_the_limit_and_holds_no_quota(acme, ingest):
    subscribe(acme, plan("max", 100))

    over = post_json(ingest, "/api/v1/reservations",
                     {"reservation_id": "r1", "customer": "acme-co", "meter": "agents", "quantity": "150",
                      "ttl_seconds": 60})
    under = post_json(ingest, "/api/v1/reservations",
                      {"reservation_id": "r2", "customer": "acme-co", "meter": "agents", "quantity": "90",
                       "ttl_seconds": 60})

    assert over.status_code == 402 and over.json()["error"]["code"] == "quota_exceeded"
    assert under.status_code == 201
    from billing.guardrails.models import Reservation

    assert "quota" not in Reservation.objects.get(reservation_id="r2").legs


@pytest.mark.django_db
def test_a_contended_batch_waits_its_turn_then_books(acme, debit_mode, monkeypatch):
    # given a ledger that refused the first bookings (the accounts kept moving) and serialization from the start
    from billing.usage.ingest import debit
    from ledger.backends.base import LedgerBackend, LedgerRefused

    if debit_mode == "together":
        pytest.skip("a ledger in the database decides again under its locks instead")
    subscribe(acme, plan("unique_count", 3))
    monkeypatch.setattr(debit, "_OPTIMISTIC_TRIES", 1)
    refusals = iter([True, True])
    real = LedgerBackend.book_with

    def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
        if next(refusals, False):
            raise LedgerRefused("moved")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LedgerBackend, "book_with", flaky)

    # when a batch comes, it is decided afresh each time and booked on the third try, under the customer lock
    assert outcomes([event("1", agent="a1"), event("2", agent="a2")]) == ["accepted", "accepted"]
    assert UsageEvent.objects.filter(billable=True).count() == 2


@pytest.mark.django_db
def test_a_batch_that_never_gets_through_answers_503_and_keeps_nothing(acme, debit_mode, monkeypatch, ingest):
    from ledger.backends.base import LedgerBackend, LedgerRefused

    if debit_mode == "together":
        pytest.skip("a ledger in the database decides again under its locks instead")
    subscribe(acme, plan("unique_count", 3))

    def refused(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise LedgerRefused("moved")

    monkeypatch.setattr(LedgerBackend, "book_with", refused)

    response = post_json(ingest, "/api/v1/events", json.loads(event("1", agent="a1")))

    assert response.status_code == 503 and response["Retry-After"]
    assert not UsageEvent.objects.exists()
