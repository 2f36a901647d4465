"""Queue a Celery task from a service.

A task module imports the service it calls, so a service queues its follow-up task by the task's
registered name rather than by importing it: tasks sit above services (docs/architecture.md)."""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.db import transaction

from billing.common.degraded import degraded


def task_named(name: str) -> Any:
    """The task registered as ``name`` (``@shared_task(name=...)``). A web process has not imported the
    task modules yet: the first lookup loads them (Celery's autodiscovery)."""
    app = current_app
    if name not in app.tasks:
        app.loader.import_default_modules()
    return app.tasks[name]


def queue_after_commit(name: str, *args: Any) -> None:
    """Queue the task ``name`` with ``args`` once the current transaction commits. The broker down is logged
    and counted, never raised: what committed stays committed and the caller's answer stands; the beat
    sweeps that own each such task queue it again."""

    def send() -> None:
        try:
            task_named(name).delay(*args)
        except Exception as error:
            degraded("broker", error)

    transaction.on_commit(send)
