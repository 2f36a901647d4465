"""Celery's queues per workload (portal/celery.py): every task goes to its workload's queue, each queue has a
binding of its own (shared bindings would copy every message into each queue), a worker started without -Q
consumes them all, and docs/operations.md documents each one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from portal.celery import QUEUES, app

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = {"guardrails": "ingest", "usage": "rollups", "invoicing": "invoicing", "payments": "payments",
            "notify": "webhooks", "portal": "celery"}


@pytest.fixture(scope="module")
def task_names() -> list[str]:
    app.loader.import_default_modules()
    return sorted(name for name in app.tasks if not name.startswith("celery."))


def test_every_task_goes_to_its_workloads_queue(task_names: list[str]) -> None:
    assert len(task_names) >= 15
    for name in task_names:
        queue = app.amqp.router.route({}, name)["queue"]
        assert queue.name == WORKLOAD[name.split(".")[0]], name
        assert queue.name in QUEUES


def test_a_message_for_one_queue_is_bound_to_that_queue_only() -> None:
    queues = app.amqp.queues
    bindings = {(queue.exchange.name, queue.routing_key) for queue in queues.values()}
    assert len(bindings) == len(queues) == len(QUEUES)
    # what a producer sends for a rollup reaches the rollups queue's binding and no other
    route = app.amqp.router.route({}, "usage.rollup")
    assert (route["queue"].exchange.name, route["queue"].routing_key) == ("rollups", "rollups")


def test_a_worker_started_without_q_consumes_every_queue() -> None:
    consumed = {queue.name for queue in app.amqp.queues.consume_from.values()} if app.amqp.queues.consume_from \
        else set(app.amqp.queues)
    assert consumed == set(QUEUES)


def test_operations_documents_every_queue() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index("### Queues")
    section = text[start:text.index("\n#", start + 1)]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.M))
    assert documented == set(QUEUES)
