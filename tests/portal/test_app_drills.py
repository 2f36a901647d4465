"""The fast application drills of ``make drills`` (bench/drills.py, bench/_appdrills.py), as CI runs them:
gunicorn, a Celery worker and beat on a PostgreSQL and a Redis of the drill's own. 100 concurrent debits on
one credit grant consume exactly the credit; gunicorn workers SIGKILLed during ingest and PostgreSQL stopped
and started again under retrying clients lose nothing, count nothing twice and answer no 5xx but ``503``
with ``Retry-After``; a task queued while PostgreSQL is down is retried and runs once it is back. The slower
drills (the worker killed mid-rollup and mid-finalization, Redis stopped
20 s) are `make drills`; the Redis outage also has its own test (test_worker_broker_outage.py)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import _missing

ROOT = Path(__file__).resolve().parents[2]


def _drills() -> ModuleType:
    spec = importlib.util.spec_from_file_location("drills", ROOT / "bench" / "drills.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_credit_web_kill_and_postgres_restart_drills_lose_nothing_count_nothing_twice_and_answer_no_500() -> None:
    if shutil.which("redis-server") is None:
        _missing("the application drills need redis-server (apt-get install redis-server)")
    drills = _drills()

    results = drills.main(["--drills", "credit,web-kill,postgres", "--settle", "3", "--hold", "4", "--app-kills", "2"])

    assert results["problems"] == []
    rows = {row["key"]: row for row in results["rows"]}
    assert set(rows) == {"credit", "web-kill", "postgres", "postgres-task"}
    for row in rows.values():
        assert row["lost"] == row["double_counted"] == 0 and row["5xx"] in (0, None), row
        assert row["stored"] > 0
    debits = rows["credit"]
    assert debits["sent"] == 100 and debits["accepted"] == debits["stored"] == 50 and debits["refused"] == 50
    assert debits["credit_left"] == "0"  # exactly the credit, no overshoot
    web = rows["web-kill"]
    assert web["workers_killed"] == 2 and web["stored"] == web["sent"] == web["ledger_used"]
    pg = rows["postgres"]
    assert pg["503_retried"] > 0  # the outage was felt, and answered 503 with Retry-After
    assert pg["stored"] == pg["sent"] == pg["ledger_used"] and pg["recovery_s"] is not None
    task = rows["postgres-task"]  # a one-off task queued while PostgreSQL was down ran once it was back
    assert task["sent"] == task["stored"] >= 1 and task["tasks_failed_unretried"] == 0
    assert task["recovery_s"] is not None and task["recovery_s"] <= 60
