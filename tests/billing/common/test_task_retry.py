"""A task that meets PostgreSQL down is retried with backoff, not lost (billing/common/tasks.py): on a real
PostgreSQL, the task's connection pointed at a port nothing listens on for its first tries (a real
``OperationalError`` from psycopg), then back. The same through a real worker and a real PostgreSQL restart is
the postgres drill (bench/_appdrills.py, tests/portal/test_app_drills.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery.signals import task_retry
from django.db import OperationalError, connection

from billing.common.tasks import MAX_DELAY_SECONDS, UNAVAILABLE_RETRIES, RetryWhenUnavailable, unavailable_delay
from portal.celery import app
from portal.models import Heartbeat
from portal.tasks import heartbeat
from tests.portal.processes import free_port


@contextlib.contextmanager
def postgres_away() -> Iterator[Callable[[], None]]:
    """The default connection pointed at a closed port until the ``back()`` it yields is called (or the end)."""
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(free_port()))

    def back() -> None:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)

    try:
        yield back
    finally:
        back()


@contextlib.contextmanager
def retries_seen(on_retry: Callable[[int], None] = lambda n: None) -> Iterator[list[Any]]:
    """The ``Retry`` of each retry a task makes, in order; ``on_retry(n)`` after the n-th."""
    seen: list[Any] = []

    def handler(sender: Any = None, reason: Any = None, **kwargs: Any) -> None:
        seen.append(reason)
        on_retry(len(seen))

    task_retry.connect(handler, weak=False)
    try:
        yield seen
    finally:
        task_retry.disconnect(handler)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_task_that_meets_postgresql_down_is_retried_with_backoff_and_runs_once_it_is_back():
    with postgres_away() as back, retries_seen(lambda n: back() if n == 2 else None) as retries:
        result = heartbeat.apply()

    assert result.successful(), result.traceback
    assert len(retries) == 2  # refused twice, then PostgreSQL was back
    assert all(isinstance(r.exc, OperationalError) for r in retries)
    assert 1.0 <= retries[0].when <= 2.0 and 2.0 <= retries[1].when <= 4.0  # the backoff's countdowns
    assert Heartbeat.objects.get(name="beat").seen_at.isoformat() == result.result


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_task_stops_retrying_after_its_last_retry_and_fails_with_the_error():
    with postgres_away(), retries_seen() as retries:
        result = heartbeat.apply()

    assert result.failed()
    assert isinstance(result.result, OperationalError)
    assert len(retries) == UNAVAILABLE_RETRIES
    assert not Heartbeat.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_task_called_as_a_plain_function_raises_at_once():
    with postgres_away(), retries_seen() as retries, pytest.raises(OperationalError):
        heartbeat()

    assert retries == []


def test_every_task_retries_when_a_store_is_unavailable():
    app.loader.import_default_modules()
    ours = {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}

    assert len(ours) >= 20
    assert all(isinstance(task, RetryWhenUnavailable) for task in ours.values())
    # a task's own retry settings (the alert check's and the invoice email's, for a mail server away) keep theirs
    assert ours["guardrails.alerts_check"].max_retries == ours["notify.invoice_email"].max_retries == 12


def test_the_backoff_doubles_from_2_seconds_to_2_minutes_with_jitter_in_the_upper_half():
    for retries, ceiling in [(0, 2), (1, 4), (2, 8), (5, 64), (6, MAX_DELAY_SECONDS), (11, MAX_DELAY_SECONDS)]:
        delays = [unavailable_delay(retries) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (retries, delays[:5])
        assert len(set(delays)) > 1  # spread, not all at once
