"""Hard limits enforced at ingest through the ledger: quotas, spend caps, prepaid credits (402)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection

from billing.catalog.models import Meter
from billing.common.auth import Principal
from billing.common.calendar import period_key
from billing.guardrails.services import credits_grant
from billing.usage.models import UsageEvent
from billing.usage.services import events_ingest
from tests import factories
from tests.conftest import post_json

ADMIN = Principal(scopes=frozenset({"admin"}))
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
AT = datetime.now(timezone.utc) - timedelta(seconds=5)  # one instant: a retried body is the same body
pytestmark = pytest.mark.usefixtures("debit_mode")  # every test in both ways of booking (conftest.py)


GRADUATED_TIERS: list[dict] = [{"up_to": 10, "unit_price": "1"}, {"up_to": None, "unit_price": "0.1"}]


def catalog(hard: str | None = None, cap: str | None = None, price: str = "0.01",
            tiers: list[dict] | None = None) -> str:
    return factories.metered(price=price, hard=hard, soft="80%" if hard else None, cap=cap, tiers=tiers)


def subscribe(customer, text: str) -> None:
    factories.subscribe(customer, "metered", start=START, now=datetime.now(timezone.utc), catalog_text=text)


def body(event_id: str, quantity: str = "1", **extra: object) -> bytes:
    return json.dumps({"event_id": event_id, "customer": "acme-co", "meter": "llm_tokens", "quantity": quantity,
                       "timestamp": AT.isoformat(), **extra}).encode()


def hammer(threads: int = 16, per_thread: int = 500, batch: int = 50,
           body_of: Callable[[str], bytes] = body) -> list[str]:
    """threads x per_thread events of 1 unit (``body_of(event_id)``), each thread in batches, all at once."""
    barrier = threading.Barrier(threads)
    lock = threading.Lock()
    statuses: list[str] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for start in range(0, per_thread, batch):
                raw = [body_of(f"t{n}-{i}") for i in range(start, start + batch)]
                results = events_ingest(principal=ADMIN, raw_events=raw)
                with lock:
                    statuses.extend(r.error.code if r.error else r.status for r in results)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, range(threads)))
    return statuses


@pytest.mark.ledger
@pytest.mark.django_db
def test_event_over_the_hard_limit_is_402_with_remaining_and_kept_as_not_billable(acme, ingest):
    subscribe(acme, catalog(hard="100"))

    ok = post_json(ingest, "/api/v1/events", json.loads(body("a", "60")))
    over = post_json(ingest, "/api/v1/events", json.loads(body("b", "41")))
    fits = post_json(ingest, "/api/v1/events", json.loads(body("c", "40")))

    assert ok.status_code == 201 and fits.status_code == 201
    assert over.status_code == 402
    assert over.json()["error"] == {"code": "quota_exceeded", "message": over.json()["error"]["message"],
                                    "remaining": "40", "unit": "token"}
    kept = UsageEvent.objects.get(event_id="b")
    assert (kept.billable, kept.reason) == (False, "rejected_quota_exceeded")


@pytest.mark.ledger
@pytest.mark.django_db
def test_retried_rejected_event_stays_rejected_and_retried_accepted_event_debits_once(acme, ingest, admin):
    subscribe(acme, catalog(hard="10"))
    assert post_json(ingest, "/api/v1/events", json.loads(body("fits", "6"))).status_code == 201
    assert post_json(ingest, "/api/v1/events", json.loads(body("too-big", "5"))).status_code == 402

    again_ok = post_json(ingest, "/api/v1/events", json.loads(body("fits", "6")))
    again_rejected = post_json(ingest, "/api/v1/events", json.loads(body("too-big", "5")))

    assert again_ok.status_code == 200 and again_ok.json()["status"] == "duplicate"
    assert again_rejected.status_code == 402
    quota = admin.get("/api/v1/customers/acme-co/balance").json()["quotas"][0]
    assert (quota["used"], quota["remaining"], quota["limit"], quota["soft_limit"]) == ("6", "4", "10", "8")
    assert post_json(ingest, "/api/v1/events", json.loads(body("last", "4"))).status_code == 201


@pytest.fixture
def reads(monkeypatch: Any) -> list[list[str]]:
    """The ids of every read of which events are stored, in order."""
    from billing.usage.ingest import store

    seen: list[list[str]] = []
    real = store.stored_columns

    def spy(customer: int, ids: list[str], columns: str) -> list:
        seen.append(ids)
        return real(customer, ids, columns)

    monkeypatch.setattr(store, "stored_columns", spy)
    return seen


@pytest.mark.ledger
@pytest.mark.django_db
def test_a_single_event_is_decided_without_reading_what_is_stored_and_its_retry_still_debits_once(
        acme, ingest, admin, debit_mode, reads):
    """A single event is seldom a retry: its first try skips the read of which events are stored; the
    insert refuses to debit one stored already, and the next try reads it (a retry answered as before)."""
    subscribe(acme, catalog(hard="10"))

    first = post_json(ingest, "/api/v1/events", json.loads(body("one", "6")))
    assert first.status_code == 201 and reads == []
    again = post_json(ingest, "/api/v1/events", json.loads(body("one", "6")))
    changed = post_json(ingest, "/api/v1/events", json.loads(body("one", "7")))
    refused = post_json(ingest, "/api/v1/events", json.loads(body("big", "5")))
    refused_again = post_json(ingest, "/api/v1/events", json.loads(body("big", "5")))

    assert again.status_code == 200 and again.json()["status"] == "duplicate" and ["one"] in reads
    assert changed.status_code == 409
    assert refused.status_code == 402 and refused_again.status_code == 402
    quota = admin.get("/api/v1/customers/acme-co/balance").json()["quotas"][0]
    assert (quota["used"], quota["remaining"]) == ("6", "4")
    assert UsageEvent.objects.filter(customer=acme).count() == 2


@pytest.mark.ledger
@pytest.mark.django_db
def test_a_retried_batch_with_a_new_event_debits_the_new_one_only(acme, ingest, admin, debit_mode, reads):
    """A retry of a batch with one event more: the stored events are duplicates and debit nothing again,
    the new one is debited."""
    subscribe(acme, catalog(hard="100"))

    def send(*events: tuple[str, str]) -> list[str]:
        response = post_json(ingest, "/api/v1/events/batch", {"events": [json.loads(body(e, q)) for e, q in events]})
        return [r["status"] for r in response.json()["results"]]

    assert send(("a", "10"), ("b", "20")) == ["accepted", "accepted"]
    assert send(("a", "10"), ("b", "20"), ("c", "30")) == ["duplicate", "duplicate", "accepted"]
    assert any({"a", "b"} <= set(ids) for ids in reads)  # read which are stored before deciding
    quota = admin.get("/api/v1/customers/acme-co/balance").json()["quotas"][0]
    assert (quota["used"], quota["remaining"]) == ("60", "40")
    assert UsageEvent.objects.filter(customer=acme).count() == 3


@pytest.mark.ledger
@pytest.mark.postgres
@pytest.mark.django_db
def test_an_event_stored_after_the_batch_read_its_ids_is_not_debited_twice(acme, admin, debit_mode, monkeypatch):
    """The race the one-statement debit must catch: another request stores one of the batch's events after
    the batch read which of them are stored (here: that read misses it once). The statement keeps nothing
    and the batch runs again; the event is a duplicate and is debited once, the new one once."""
    from billing.usage.ingest import store as services

    subscribe(acme, catalog(hard="100"))
    assert [r.status for r in events_ingest(principal=ADMIN, raw_events=[body("a", "10")])] == ["accepted"]
    real = services.stored_rows
    missed: list[int] = []

    def stale(rows: list) -> dict:
        found = real(rows)
        if found and not missed and debit_mode == "together":
            missed.append(len(found))
            return {}  # as if "a" were stored just after this read
        return found

    monkeypatch.setattr(services, "stored_rows", stale)
    # "b" first: the batch's transfers take their ids from it, so only the check of what was inserted
    # (not the ledger's idempotent ids) can see that "a" is not new
    results = events_ingest(principal=ADMIN, raw_events=[body("b", "20"), body("a", "10")])

    assert [r.status for r in results] == ["accepted", "duplicate"]
    assert missed == ([1] if debit_mode == "together" else [])  # the race was played where it can happen
    quota = admin.get("/api/v1/customers/acme-co/balance").json()["quotas"][0]
    assert (quota["used"], quota["remaining"]) == ("30", "70")
    assert UsageEvent.objects.filter(customer=acme).count() == 2


@pytest.mark.ledger
@pytest.mark.django_db
def test_batch_applies_limits_in_order_and_one_refusal_sinks_nothing_else(acme, ingest):
    subscribe(acme, catalog(hard="5"))

    response = post_json(ingest, "/api/v1/events/batch", {"events": [
        json.loads(body("a", "3")), json.loads(body("b", "3")), json.loads(body("c", "2"))]})

    assert [r["status"] for r in response.json()["results"]] == ["accepted", "rejected", "accepted"]
    assert response.json()["results"][1]["error"]["code"] == "quota_exceeded"


@pytest.mark.ledger
@pytest.mark.django_db
def test_spend_cap_prices_each_event_with_the_rate_card(acme, ingest):
    subscribe(acme, catalog(cap="1.00", price="0.25"))

    statuses = [post_json(ingest, "/api/v1/events", json.loads(body(f"e{i}", "1"))).status_code for i in range(5)]

    assert statuses == [201, 201, 201, 201, 402]
    refused = post_json(ingest, "/api/v1/events", json.loads(body("e9", "1"))).json()["error"]
    assert refused["code"] == "spend_cap_exceeded" and refused["remaining"] == "0"


@pytest.mark.ledger
@pytest.mark.django_db
def test_prepaid_credits_are_drawn_down_and_refused_when_short(acme, ingest, admin):
    subscribe(acme, catalog(price="0.001"))
    grant = admin.post("/api/v1/customers/acme-co/credits", {"amount": "0.005", "idempotency_key": "g1"}, format="json")
    again = admin.post("/api/v1/customers/acme-co/credits", {"amount": "0.005", "idempotency_key": "g1"}, format="json")
    other = admin.post("/api/v1/customers/acme-co/credits", {"amount": "9", "idempotency_key": "g1"}, format="json")

    assert (grant.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert post_json(ingest, "/api/v1/events", json.loads(body("a", "4"))).status_code == 201
    refused = post_json(ingest, "/api/v1/events", json.loads(body("b", "2")))
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "insufficient_credits"
    assert refused.json()["error"]["remaining"] == "0.001"
    credits = admin.get("/api/v1/customers/acme-co/balance").json()["credits"][0]
    assert credits == {"currency": "USD", "posted": "0.001", "pending": "0", "available": "0.001"}


@pytest.mark.ledger
@pytest.mark.django_db
@pytest.mark.parametrize("model", ["per_unit", "graduated"])
def test_credits_granted_after_earlier_events_are_drawn_from_the_next_one(acme, ingest, admin, model):
    # given a plan without limits (ingest takes the customer to have no wallet), events already sent
    text = catalog(price="0.001")
    if model == "graduated":  # priced with a usage counter, created when the wallet shows up
        text = text.replace('model: per_unit, unit_price: "0.001"',
                            'model: graduated, tiers: [{up_to: 1000, unit_price: "0.001"}, {up_to: null, unit_price: "0.0005"}]')
    subscribe(acme, text)
    assert post_json(ingest, "/api/v1/events", json.loads(body("a", "4"))).status_code == 201

    # when credits are granted, then more events come
    assert admin.post("/api/v1/customers/acme-co/credits", {"amount": "0.005", "idempotency_key": "g"},
                      format="json").status_code == 201
    drawn = post_json(ingest, "/api/v1/events", json.loads(body("b", "4")))
    short = post_json(ingest, "/api/v1/events", json.loads(body("c", "2")))

    # then the wallet is found and drawn down at once, and refuses what it cannot pay
    assert drawn.status_code == 201
    assert short.status_code == 402 and short.json()["error"]["code"] == "insufficient_credits"
    credits = admin.get("/api/v1/customers/acme-co/balance").json()["credits"][0]
    assert credits["available"] == "0.001"


@pytest.mark.ledger
@pytest.mark.django_db
def test_customers_without_limits_are_not_touched(acme, ingest):
    subscribe(acme, catalog())

    assert post_json(ingest, "/api/v1/events", json.loads(body("free", "1000000"))).status_code == 201
    from ledger.models import LedgerTransfer

    assert not LedgerTransfer.objects.exists()


@pytest.mark.ledger
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_sixteen_threads_never_exceed_a_hard_limit(acme):
    subscribe(acme, catalog(hard="1000"))

    statuses = hammer()

    assert statuses.count("accepted") == 1000
    assert statuses.count("quota_exceeded") == 16 * 500 - 1000
    assert sum(e.quantity for e in UsageEvent.objects.filter(billable=True)) == 1000


@pytest.mark.ledger
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_sixteen_threads_never_exceed_a_spend_cap(acme):
    subscribe(acme, catalog(cap="10.00", price="0.01"))

    statuses = hammer()

    assert statuses.count("accepted") == 1000
    assert set(statuses) == {"accepted", "spend_cap_exceeded"}


@pytest.mark.ledger
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_sixteen_threads_never_overdraw_prepaid_credits(acme):
    subscribe(acme, catalog(price="0.01"))
    credits_grant(customer=acme, amount=Decimal("5.00"), currency="USD", idempotency_key="k")

    statuses = hammer()

    assert statuses.count("accepted") == 500
    assert set(statuses) == {"accepted", "insufficient_credits"}


@pytest.mark.ledger
@pytest.mark.django_db
def test_a_retry_never_touches_the_ledger_again_even_after_a_plan_change(acme, tokens_meter, ingest, admin):
    first = post_json(ingest, "/api/v1/events", json.loads(body("early", "50")))  # no plan yet: not limited
    subscribe(acme, catalog(hard="100"))

    retry = post_json(ingest, "/api/v1/events", json.loads(body("early", "50")))

    assert first.status_code == 201 and retry.status_code == 200
    assert admin.get("/api/v1/customers/acme-co/balance").json()["quotas"][0]["used"] == "0"


GRADUATED = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
plans:
  - key: metered
    name: Metered
    currency: USD
    effective_from: "2026-01-01T00:00:00Z"
    charges:
      - {meter: llm_tokens, model: graduated, tiers: [{up_to: 100, unit_price: "0.01"}, {up_to: null, unit_price: "0.001"}]}
    limits:
      - {meter: llm_tokens, hard: 1000}
    spend_cap: "100"
"""


@pytest.mark.django_db
@pytest.mark.parametrize("debit_mode", ["together"], indirect=True)
def test_a_batch_debits_one_transfer_per_account_in_the_insert_transaction(acme, debit_mode, admin):
    # given a graduated price, a hard limit, a spend cap and prepaid credits, on the SQL ledger
    from billing.guardrails import accounts as acc
    from ledger.backends import get_ledger
    from ledger.codes import AccountCode, TransferCode, currency_ledger, unit_ledger
    from ledger.ids import derive

    subscribe(acme, GRADUATED)
    credits_grant(customer=acme, amount=Decimal("50"), currency="USD", idempotency_key="k")
    meter = Meter.objects.get(key="llm_tokens")

    # when two events cross the first tier's end (90 at 0.01 = 0.9, then 10 at 0.01 + 20 at 0.001 = 0.12),
    # and the same batch is sent again
    batch = [body("a", "90"), body("b", "30")]
    first = events_ingest(principal=ADMIN, raw_events=batch)
    again = events_ingest(principal=ADMIN, raw_events=batch)

    # then one transfer per account holds the batch, its id derived from the batch's first event
    assert [r.status for r in first] == ["accepted", "accepted"] and [r.status for r in again] == ["duplicate"] * 2
    period = period_key(AT)
    ids = acc.Ids(acme.pk)
    usd, units = currency_ledger("USD"), unit_ledger(meter.pk)
    cost = acc.money_units_ceil(Decimal("0.9")) + acc.money_units_ceil(Decimal("0.12"))
    wanted = {
        (ids.counter(meter.pk, "|", period), TransferCode.USAGE_COUNTER): (AccountCode.OPERATOR_COUNTER, units,
                                                                           acc.qty_units(Decimal(120))),
        (ids.quota(meter.pk, period), TransferCode.USAGE_QUOTA): (AccountCode.OPERATOR_QUOTA, units,
                                                                  acc.qty_units(Decimal(120))),
        (ids.spend("USD", period), TransferCode.USAGE_SPEND): (AccountCode.OPERATOR_SPEND, usd, cost),
        (ids.wallet("USD"), TransferCode.USAGE_CREDITS): (AccountCode.CREDITS_CONSUMED, usd, cost),
    }
    for (debit, code), (operator, ledger, amount) in wanted.items():
        history = [t for t in get_ledger().account_transfers(debit) if t.code == code]
        assert len(history) == 1, (code, history)
        transfer = history[0]
        assert transfer.id == derive("usage-batch", int(code), debit, acme.pk, "a")
        credit = (ids.consumed("USD", period) if operator is AccountCode.CREDITS_CONSUMED  # the period's, per customer
                  else acc.operator_account(operator, ledger).id)
        assert (transfer.credit_account_id, transfer.ledger, transfer.amount) == (credit, ledger, amount)
        assert (transfer.user_data_128, transfer.user_data_64, transfer.user_data_32) == (acme.pk, meter.pk, period)
    # and no per-event transfer exists
    assert not get_ledger().lookup_transfers([derive("usage-quota", acme.pk, "a"), derive("usage-quota", acme.pk, "b")])
    balance = admin.get("/api/v1/customers/acme-co/balance").json()
    assert balance["quotas"][0]["used"] == "120"


@pytest.mark.django_db
@pytest.mark.parametrize("debit_mode", ["together"], indirect=True)
def test_a_failed_insert_rolls_the_batch_debit_back(acme, debit_mode, monkeypatch):
    # given a hard limit of 10
    from django.db import transaction

    from ledger.backends.sql import SqlLedger

    subscribe(acme, catalog(hard="10"))
    real_book_with = SqlLedger.book_with

    def book_with_then_fail(self, *args, **kwargs):
        with transaction.atomic():
            real_book_with(self, *args, **kwargs)
            raise RuntimeError("connection lost before the commit")

    # when the first attempt dies after its insert and its ledger debit, before the commit, and is retried
    monkeypatch.setattr(SqlLedger, "book_with", book_with_then_fail)
    with pytest.raises(RuntimeError):
        events_ingest(principal=ADMIN, raw_events=[body("a", "6")])
    monkeypatch.setattr(SqlLedger, "book_with", real_book_with)
    retry = events_ingest(principal=ADMIN, raw_events=[body("a", "6"), body("b", "6")])

    # then nothing of the failed attempt was kept: a is accepted once, b does not fit in what is left
    assert [r.status for r in retry] == ["accepted", "rejected"]
    error = retry[1].error
    assert error is not None and error.code == "quota_exceeded" and error.extra["remaining"] == "4"
    assert UsageEvent.objects.filter(event_id="a", billable=True).count() == 1


@pytest.mark.ledger
@pytest.mark.django_db
@pytest.mark.parametrize("sqlstate", ["40P01", "55P03"])  # deadlock_detected; lock_not_available (lock_timeout)
def test_a_batch_rolled_back_to_break_a_deadlock_is_run_again(acme, debit_mode, monkeypatch, sqlstate):
    # given a hard limit, and an insert that PostgreSQL picks as the deadlock victim once (or that gives up
    # waiting for a lock: the careful pass's lock_timeout)
    from django.db import OperationalError

    import billing.usage.ingest.store as ingest_services

    subscribe(acme, catalog(hard="10"))
    real_insert, calls = ingest_services.insert_rows, []

    class DeadlockDetected(Exception):
        pass

    DeadlockDetected.sqlstate = sqlstate  # type: ignore[attr-defined]

    def victim_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("deadlock detected") from DeadlockDetected()
        return real_insert(*args, **kwargs)

    monkeypatch.setattr(ingest_services, "insert_rows", victim_once)

    # when a batch is sent
    results = events_ingest(principal=ADMIN, raw_events=[body("a", "4"), body("b", "4")])

    # then it was run again, whole, and counted once
    assert [r.status for r in results] == ["accepted", "accepted"] and len(calls) == 2
    assert UsageEvent.objects.filter(billable=True).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize("debit_mode", ["together"], indirect=True)
def test_the_careful_pass_holds_every_account_it_books_before_it_books(acme, debit_mode, monkeypatch):
    # given a graduated price (a usage counter) under a hard limit and a spend cap, and a batch with an
    # event over the limit, which sends it to the careful pass (decide under locks, then book)
    from ledger.backends.sql import SqlLedger

    subscribe(acme, catalog(hard="10", cap="1000", tiers=GRADUATED_TIERS))
    locked: list[set[int]] = []
    booked: list[set[int]] = []
    real_lock, real_book = SqlLedger.lock_accounts, SqlLedger.book_checked

    def lock(self, ids):
        locked.append(set(ids))
        return real_lock(self, ids)

    def book(self, transfers, expect=None):
        booked.append({t.debit_account_id for t in transfers} | {t.credit_account_id for t in transfers})
        return real_book(self, transfers, expect)

    monkeypatch.setattr(SqlLedger, "lock_accounts", lock)
    monkeypatch.setattr(SqlLedger, "book_checked", book)

    # when it is ingested
    results = events_ingest(principal=ADMIN, raw_events=[body("a", "4"), body("b", "9")])

    # then every account the booking moved (the customer's and the operator's it credits) was locked
    # first, in the one ascending-order statement: the pass never waits for an account while holding others
    assert [r.status for r in results] == ["accepted", "rejected"]
    assert len(locked) == 1 and len(booked) == 1
    assert booked[0] <= locked[0], booked[0] - locked[0]


def _overtaken_once(monkeypatch, interloper) -> list[int]:
    """Make the first unlocked (optimistic) decision be overtaken: right after it, ``interloper`` runs in
    another thread and connection and commits, before the batch is booked."""
    from billing.guardrails.limits import BatchDebit

    real_decide = BatchDebit.decide
    runs: list[int] = []

    def decide_then_overtaken(self, *args, **kwargs):
        refusals = real_decide(self, *args, **kwargs)
        if not self.locked and not runs:
            runs.append(1)

            def other() -> None:
                try:
                    interloper()
                finally:
                    connection.close()

            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
        return refusals

    monkeypatch.setattr(BatchDebit, "decide", decide_then_overtaken)
    return runs


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("debit_mode", ["together"], indirect=True)
def test_a_batch_overtaken_between_its_decision_and_its_booking_is_decided_again(acme, debit_mode, monkeypatch):
    # given a hard limit of 11 with one unit used (the period's accounts exist), and a batch of six units
    # decided on an unlocked read of 10 left
    subscribe(acme, catalog(hard="11"))
    assert events_ingest(principal=ADMIN, raw_events=[body("first")])[0].status == "accepted"
    other = []
    runs = _overtaken_once(monkeypatch, lambda: other.extend(
        events_ingest(principal=ADMIN, raw_events=[body(f"o{i}") for i in range(6)])))

    # when another request takes six units before the batch is booked
    results = events_ingest(principal=ADMIN, raw_events=[body(f"m{i}") for i in range(6)])

    # then the ledger refused the stale booking and the batch was decided again under locks: exactly 10
    assert runs == [1] and [r.status for r in other] == ["accepted"] * 6
    assert [r.status for r in results] == ["accepted"] * 4 + ["rejected"] * 2
    assert {r.error.code for r in results[4:] if r.error} == {"quota_exceeded"}
    assert UsageEvent.objects.filter(billable=True).count() == 11


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("debit_mode", ["together"], indirect=True)
def test_a_batch_whose_event_another_request_stored_first_keeps_nothing_of_its_booking(acme, admin, debit_mode,
                                                                                     monkeypatch):
    # given a hard limit of 10, and a batch of three events decided as all new on an unlocked read
    from billing.guardrails import accounts as acc
    from ledger.codes import TransferCode
    from ledger.models import LedgerTransfer

    subscribe(acme, catalog(hard="10"))
    assert events_ingest(principal=ADMIN, raw_events=[body("first")])[0].status == "accepted"
    other = []
    runs = _overtaken_once(monkeypatch, lambda: other.extend(
        events_ingest(principal=ADMIN, raw_events=[body("m1", "2")])))

    # when another request stores one of its events (the same body: a client's retry) before the batch
    # inserts and books in its one statement
    results = events_ingest(principal=ADMIN, raw_events=[body("m0", "2"), body("m1", "2"), body("m2", "2")])

    # then that statement kept nothing (it would have debited m1 a second time) and the batch was decided
    # again (one more optimistic pass, which reads m1 as stored): m1 is a duplicate, debited once, by the
    # request that stored it
    assert runs == [1] and [r.status for r in other] == ["accepted"]
    assert [r.status for r in results] == ["accepted", "duplicate", "accepted"]
    assert UsageEvent.objects.filter(event_id="m1").count() == 1
    quota = sum(t.amount for t in LedgerTransfer.objects.filter(code=TransferCode.USAGE_QUOTA))
    assert quota == acc.qty_units(Decimal(7))  # first (1) + m0, m1, m2 (2 each)
    assert admin.get("/api/v1/customers/acme-co/balance").json()["quotas"][0]["used"] == "7"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("debit_mode", ["together"], indirect=True)
def test_a_batch_priced_in_a_tier_another_request_left_is_priced_again(acme, debit_mode, monkeypatch):
    # given a graduated price (10 units at 1.00, then 0.10) under a spend cap, and a batch of five units
    # priced at 1.00 each on an unlocked read of the usage counter at 0
    from billing.catalog import pricing
    from billing.catalog.ratecard import charge_of
    from ledger.codes import TransferCode
    from ledger.models import LedgerTransfer

    subscribe(acme, catalog(cap="1000", tiers=GRADUATED_TIERS))
    assert events_ingest(principal=ADMIN, raw_events=[body("first")])[0].status == "accepted"
    runs = _overtaken_once(monkeypatch, lambda: events_ingest(principal=ADMIN, raw_events=[body("o", "8")]))

    # when another request moves the counter to 9 before the batch is booked
    results = events_ingest(principal=ADMIN, raw_events=[body(f"m{i}") for i in range(5)])

    # then the batch was priced again from 9: one unit at 1.00, four at 0.10; 14 units cost what the rate
    # card says 14 units cost
    assert runs == [1] and [r.status for r in results] == ["accepted"] * 5
    spent = sum(t.amount for t in LedgerTransfer.objects.filter(code=TransferCode.USAGE_SPEND))
    spec = charge_of({"meter": "llm_tokens", "model": "graduated", "tiers": [{"up_to": "10", "unit_price": "1"},
                                                                          {"up_to": None, "unit_price": "0.1"}]}).spec
    assert spent == int(pricing.price(Decimal(14), spec).amount.scaleb(12))
