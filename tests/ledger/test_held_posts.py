"""The poster of held batches (ledger.holds.Poster): posts handed to it by several threads go in one
ledger call, ``drain`` waits for them, a forked child has its own; and a held batch through ingest with
the outbox row in the insert's statement (PostgreSQL) or transaction (SQLite)."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from ledger import holds
from ledger.models import HeldPost
from ledger.types import Status, Transfer, TransferFlags


class FakeLedger:
    """Records create_transfers calls; the first one waits for ``release``."""

    posts_later = True

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = threading.Event()

    def create_transfers(self, transfers: Any) -> list[Status]:
        self.release.wait(10)
        self.calls.append([t.pending_id for t in transfers])
        return [Status.CREATED for _ in transfers]


def fake() -> Any:
    return FakeLedger()


def posts(*pending: int) -> list[Transfer]:
    return [Transfer(id=1000 + p, pending_id=p, ledger=1, code=1, flags=TransferFlags.POST_PENDING_TRANSFER)
            for p in pending]


def test_posts_of_several_requests_go_in_one_call_and_drain_waits_for_them() -> None:
    poster, ledger = holds.Poster(), fake()
    poster.submit(ledger, posts(1))  # taken at once; its call waits for release
    threading.Event().wait(0.1)
    threads = [threading.Thread(target=poster.submit, args=(ledger, posts(p))) for p in (2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not poster.drain(0.05)  # still in flight
    ledger.release.set()
    assert poster.drain(5)
    assert ledger.calls[0] == [1]
    assert sorted(ledger.calls[1]) == [2, 3, 4]  # one call for what queued meanwhile
    assert poster.idle


def test_a_failed_post_is_left_to_the_sweep() -> None:
    class Away(FakeLedger):
        def create_transfers(self, transfers: Any) -> list[Status]:
            raise RuntimeError("away")

    poster = holds.Poster()
    away: Any = Away()
    poster.submit(away, posts(1))
    assert poster.drain(5)  # the poster goes on; the outbox row stays for holds.sweep
    ledger = fake()
    ledger.release.set()
    poster.submit(ledger, posts(2))
    assert poster.drain(5) and ledger.calls == [[2]]


def test_a_ledger_that_posts_now_is_posted_in_the_callers_thread() -> None:
    ledger = fake()
    ledger.posts_later = False
    ledger.release.set()
    holds.post_soon(ledger, posts(7))
    assert ledger.calls == [[7]]


def test_a_forked_child_has_its_own_poster() -> None:
    ledger = fake()
    ledger.release.set()
    holds.post_soon(ledger, posts(1))
    assert holds.drain(5)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            child = fake()
            child.release.set()
            holds.post_soon(child, posts(2))
            os._exit(0 if holds.drain(5) and child.calls == [[2]] else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.ledger
@pytest.mark.django_db(transaction=True)
def test_a_held_batch_records_its_outbox_row_and_is_posted_after_the_answer(acme: Any, monkeypatch: pytest.MonkeyPatch,
                                                                           settings: Any) -> None:
    from billing.usage.models import UsageEvent
    from billing.usage.services import events_ingest
    from ledger.backends.sql import SqlLedger
    from tests.billing.guardrails.test_held_debits import BATCH, quota
    from tests.billing.guardrails.test_limits_at_ingest import ADMIN, catalog, subscribe

    monkeypatch.setattr(SqlLedger, "shares_database", False)  # the SQL twin as a ledger outside the database
    monkeypatch.setattr(SqlLedger, "posts_later", True, raising=False)
    settings.LEDGER_HELD_BATCHES = True
    subscribe(acme, catalog(hard="100"))

    assert [r.status for r in events_ingest(principal=ADMIN, raw_events=BATCH)] == ["accepted", "accepted"]

    assert holds.drain(10)
    assert UsageEvent.objects.filter(billable=True).count() == 2
    assert HeldPost.objects.count() == 1
    assert quota(acme.pk) == (0, 7)


@pytest.mark.django_db
def test_the_sweep_keeps_up_with_one_outbox_row_per_batch() -> None:
    # given 2,500 outbox rows left behind (every limited batch writes one)
    from datetime import timedelta

    from django.utils import timezone

    ledger = fake()
    ledger.release.set()
    HeldPost.objects.bulk_create([HeldPost(transfers=[[str(1000 + n), str(n), 1, 1]]) for n in range(2500)])
    HeldPost.objects.update(created_at=timezone.now() - timedelta(minutes=1))

    # when the sweep runs once
    handled = holds.sweep(ledger, older_than_seconds=30, chunk=1000)

    # then every row is posted and forgotten, 1,000 at a time: three ledger calls, not 2,500
    assert handled == 2500 and not HeldPost.objects.exists()
    assert [len(call) for call in ledger.calls] == [1000, 1000, 500]
    assert sorted(p for call in ledger.calls for p in call) == list(range(2500))
