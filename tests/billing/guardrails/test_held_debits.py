"""A ledger outside the database (TigerBeetle) and the event table share no transaction: a limited batch
holds its debit in the ledger, commits its events with the holds' posts (an outbox row), then posts them
(ledger.holds). Here the writer is killed (a real process, SIGKILL-like ``os._exit``) between the steps:
nothing is lost and nothing is counted twice. On the SQL ledger made to look separate, and on a real
TigerBeetle replica in CI's TigerBeetle run."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import connections

from billing.catalog.models import Meter
from billing.common.calendar import period_key
from billing.guardrails import accounts as acc
from billing.usage.models import UsageEvent
from billing.usage.services import events_ingest
from ledger import holds
from ledger.backends import get_ledger
from ledger.models import HeldPost
from tests.billing.guardrails.test_limits_at_ingest import ADMIN, AT, body, catalog, subscribe

pytestmark = [pytest.mark.ledger, pytest.mark.django_db(transaction=True)]
BATCH = [body("a", "3"), body("b", "4")]  # 7 tokens


@pytest.fixture(autouse=True)
def held(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    from ledger.backends.sql import SqlLedger

    monkeypatch.setattr(SqlLedger, "shares_database", False)  # the SQL twin as a ledger outside the database
    settings.LEDGER_HELD_BATCHES = True


def quota(customer_pk: int) -> tuple[int, int]:
    """(debits_pending, debits_posted) of the customer's token quota this period, in tokens."""
    meter = Meter.objects.get(key="llm_tokens")
    account_id = acc.Ids(customer_pk).quota(meter.pk, period_key(AT))
    account = get_ledger().lookup_accounts([account_id])[account_id]
    return (int(acc.units_to_qty(account.debits_pending)), int(acc.units_to_qty(account.debits_posted)))


def die_during(target: Any, name: str) -> None:
    """Ingest BATCH in a forked child that exits at once (no cleanup, no atexit) when ``target.name`` is
    called: the process dies right there, as under SIGKILL."""
    connections.close_all()  # the child opens its own connection; never share one across a fork
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            def die(*args: Any, **kwargs: Any) -> Any:
                os._exit(137)

            setattr(target, name, die)
            events_ingest(principal=ADMIN, raw_events=BATCH)
            holds.drain()  # a ledger that posts later posts in this process's poster thread: wait for it
        finally:
            os._exit(1)  # got past the kill point: the parent's assertions say so
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 137, "the child did not die at the kill point"


def until(check: Callable[[], bool], seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        get_ledger().expire_pending()  # the SQL twin's clock (TigerBeetle expires holds itself)
        time.sleep(0.2)
    return True


def test_killed_after_the_commit_the_sweep_posts_the_held_debit(acme: Any) -> None:
    subscribe(acme, catalog(hard="100"))

    die_during(holds, "post")

    # the events are stored, their debit held (not posted) and its posts recorded
    assert UsageEvent.objects.filter(billable=True).count() == 2
    assert quota(acme.pk) == (7, 0)
    assert HeldPost.objects.count() == 1

    assert holds.sweep(get_ledger(), older_than_seconds=0) == 1

    assert quota(acme.pk) == (0, 7)
    assert HeldPost.objects.count() == 0
    assert holds.sweep(get_ledger(), older_than_seconds=0) == 0
    # a retry of the batch is a duplicate and debits nothing more
    assert [r.status for r in events_ingest(principal=ADMIN, raw_events=BATCH)] == ["duplicate", "duplicate"]
    assert quota(acme.pk) == (0, 7)


def test_killed_before_the_insert_the_retry_takes_its_own_hold(acme: Any) -> None:
    subscribe(acme, catalog(hard="100"))
    from billing.usage.ingest import store

    die_during(store, "insert_rows")

    # nothing stored, the debit held
    assert not UsageEvent.objects.exists()
    assert quota(acme.pk) == (7, 0)

    # the client's retry of the same batch finds its hold (same ids), stores the events and posts it
    assert [r.status for r in events_ingest(principal=ADMIN, raw_events=BATCH)] == ["accepted", "accepted"]
    assert quota(acme.pk) == (0, 7)
    assert HeldPost.objects.count() == 1  # the sweep forgets it once it is old
    assert holds.sweep(get_ledger(), older_than_seconds=0) == 1 and quota(acme.pk) == (0, 7)


def test_killed_before_the_insert_and_never_retried_the_hold_expires(acme: Any, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    subscribe(acme, catalog(hard="100"))
    from billing.usage.ingest import store

    monkeypatch.setattr(holds, "HOLD_TIMEOUT_SECONDS", 1)
    die_during(store, "insert_rows")
    assert quota(acme.pk) == (7, 0)

    assert until(lambda: quota(acme.pk) == (0, 0)), quota(acme.pk)  # the room is back, nothing was debited


def test_a_batch_over_the_limit_is_decided_event_by_event_and_holds_what_it_accepts(acme: Any) -> None:
    subscribe(acme, catalog(hard="5"))

    results = events_ingest(principal=ADMIN, raw_events=BATCH)

    assert [r.status for r in results] == ["accepted", "rejected"]
    assert quota(acme.pk) == (0, 3)  # the accepted event's hold posted; the refused one took nothing
    assert Decimal(results[1].error.extra["remaining"]) == 2  # type: ignore[union-attr]


def test_the_next_batch_is_priced_after_a_held_batch_its_process_has_not_posted_yet(
        acme: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limits read a batch's accounts without waiting for this process's posts (``peek_accounts``):
    what a usage counter holds and is not posted yet counts, so the next batch is priced after it. Graduated:
    the first 10 units at 1.00, then 0.10; 10 units held, then 2 more cost 0.20, and 12 units cost 10.20."""
    from tests.billing.guardrails.test_limits_at_ingest import GRADUATED_TIERS

    subscribe(acme, catalog(cap="1000", tiers=GRADUATED_TIERS))
    monkeypatch.setattr(holds, "post_soon", lambda ledger, posts: None)  # the poster is behind: nothing posted

    assert [r.status for r in events_ingest(principal=ADMIN, raw_events=[body("a", "10")])] == ["accepted"]
    assert [r.status for r in events_ingest(principal=ADMIN, raw_events=[body("b", "2")])] == ["accepted"]

    spend_id = acc.Ids(acme.pk).spend("USD", period_key(AT))
    held = get_ledger().lookup_accounts([spend_id])[spend_id]
    assert (acc.units_to_money(held.debits_pending), held.debits_posted) == (Decimal("10.2"), 0)
    assert holds.sweep(get_ledger(), older_than_seconds=0) == 2  # the sweep posts what the poster did not
    posted = get_ledger().lookup_accounts([spend_id])[spend_id]
    assert (posted.debits_pending, acc.units_to_money(posted.debits_posted)) == (0, Decimal("10.2"))
