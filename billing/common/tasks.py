"""The base class of every Celery task (``Celery(task_cls=...)``, portal/celery.py): a task that fails because a
store it needs is away (PostgreSQL restarting, failing over or out of connections: Django's ``OperationalError``
or ``InterfaceError``; the ledger not answering: ``LedgerUnavailable``) is retried with exponential backoff
instead of being lost until the beat runs it again, or for ever for a task queued once by a request.

Every Tollgate task is safe to run twice (natural keys, claims and leases in the database, idempotent ledger
ids: docs/operations.md, "When PostgreSQL is down"), so a retry of one that failed midway is harmless. The
retries count with the task's own (Celery's ``request.retries``); past ``UNAVAILABLE_RETRIES`` the error is
raised as any other and the beat's sweeps own the work. A task called as a plain function raises at once."""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task
from django.db import InterfaceError, OperationalError

from ledger.backends.base import LedgerUnavailable

log = logging.getLogger(__name__)

UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError, LedgerUnavailable)
UNAVAILABLE_RETRIES = 12
FIRST_DELAY_SECONDS = 2.0
MAX_DELAY_SECONDS = 120.0  # ceilings 2, 4, 8 ... 64, then 120: twelve retries span 7 to 14 minutes


def unavailable_delay(retries: int) -> float:
    """Seconds before retry number ``retries + 1``: doubling from ``FIRST_DELAY_SECONDS`` up to
    ``MAX_DELAY_SECONDS``, the upper half of it at random, so that the tasks an outage failed together do not
    all come back in the same instant."""
    ceiling = min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * 2 ** min(retries, 16))
    return round(ceiling / 2 + random.uniform(0, ceiling / 2), 3)  # noqa: S311 (spacing, not a secret)


class RetryWhenUnavailable(Task):
    """Retries the task, with ``unavailable_delay``, when it raised one of ``UNAVAILABLE``."""

    # Celery's cap for a retry() without one (its default is 3); a task's own setting wins
    max_retries = UNAVAILABLE_RETRIES

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except UNAVAILABLE as error:
            request = self.request
            if request.called_directly or request.retries >= UNAVAILABLE_RETRIES:
                raise
            delay = unavailable_delay(request.retries)
            log.warning("task %s[%s] retried in %.1f s (%d of %d): a store is unavailable: %s: %s", self.name,
                        request.id, delay, request.retries + 1, UNAVAILABLE_RETRIES, type(error).__name__, error)
            raise self.retry(exc=error, countdown=delay) from error
