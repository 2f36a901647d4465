"""The application drills' verdict (bench/_appdrills.py ``ingest_verdict`` and ``table``) fails a row that lost
an event, counted one twice, answered a 500 or a 503 without Retry-After, or dropped a connection where no
process was killed: the slow drills passing means something only because these checks can fail."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    """A bench module by its bare name, as the bench scripts import each other (bench/ is not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


drill = _load("_drill")
appdrills = _load("_appdrills")


def _record(*answers: Any, outcome: dict[str, str] | None = None) -> Any:
    record = drill.Record()
    record.outcome.update(outcome if outcome is not None else {"a": "accepted", "b": "accepted"})
    record.answers += [drill.Answer(1.0, 200, None, accepted=2), *answers]
    return record


def _stored(rows: dict[str, bool], used: int, duplicated: int = 0) -> dict[str, Any]:
    return {"stored": {event_id: [billable, ""] for event_id, billable in rows.items()}, "duplicated_ids": duplicated,
            "swept": 0, "quota": {"used": str(used), "reserved": "0"}}


def _verdict(record: Any, stored: dict[str, Any], drops_allowed: bool = False) -> dict[str, Any]:
    return appdrills.ingest_verdict("drill", record, {"recovery_s": 1.5}, stored, drops_allowed=drops_allowed)


def test_a_clean_run_is_a_clean_row_with_a_503_retried_apart() -> None:
    row = _verdict(_record(drill.Answer(0.5, 503, "5")), _stored({"a": True, "b": True}, 2))

    assert row["problems"] == []
    assert (row["sent"], row["stored"], row["lost"], row["double_counted"], row["5xx"], row["503_retried"]) == (2, 2, 0, 0,
                                                                                                                0, 1)
    assert appdrills.table([row]).splitlines()[-1].split("|")[-2].strip() == "ok"


@pytest.mark.parametrize(("record", "stored", "column"), [
    (_record(), _stored({"a": True}, 1), "lost"),                                   # b accepted, never stored
    (_record(), _stored({"a": True, "b": True}, 3), "double_counted"),              # debited three times for two
    (_record(), _stored({"a": True, "b": True}, 2, duplicated=1), "double_counted"),  # an id stored twice
    (_record(drill.Answer(2.0, 500, None)), _stored({"a": True, "b": True}, 2), "5xx"),
    (_record(drill.Answer(2.0, 503, None)), _stored({"a": True, "b": True}, 2), "5xx"),  # 503 without Retry-After
])
def test_a_broken_promise_fails_the_row(record: Any, stored: dict[str, Any], column: str) -> None:
    row = _verdict(record, stored)

    assert row[column] >= 1 and row["problems"], row
    assert appdrills.table([row]).splitlines()[-1].split("|")[-2].strip() == "FAIL"


def test_a_dropped_connection_fails_the_row_unless_the_drill_kills_a_process() -> None:
    record = _record(drill.Answer(2.0, 0, None, detail="ConnectionResetError"))
    stored = _stored({"a": True, "b": True}, 2)

    assert any("dropped" in problem for problem in _verdict(record, stored)["problems"])
    assert _verdict(record, stored, drops_allowed=True)["problems"] == []


# --- the postgres drill's tasks row (``task_verdict``): from the worker's log since the drill began ------------------
ONE_OFF = "0a0a0a0a-0000-4000-8000-000000000001"
TICK = "0b0b0b0b-0000-4000-8000-000000000002"


def _line(clock: str, text: str) -> str:
    return f"[2026-12-07 18:41:{clock}: INFO/ForkPoolWorker-1] {text}"


def _retry(task_id: str, name: str = "guardrails.alerts_check", clock: str = "35,000") -> str:
    return _line(clock, f"task {name}[{task_id}] retried in 1.3 s (1 of 12): a store is unavailable: "
                        "OperationalError: connection failed")


def _ran(task_id: str, name: str = "guardrails.alerts_check", clock: str = "40,000") -> str:
    return _line(clock, f"Task {name}[{task_id}] succeeded in 0.1s: 0")


def _task_row(*lines: str, met: bool = True) -> dict[str, Any]:
    from datetime import datetime

    back = datetime(2026, 12, 7, 18, 41, 39).timestamp()  # the log's local time, as log_time reads it
    return appdrills.task_verdict("\n".join(lines), {"id": ONE_OFF, "met": met, "back_epoch": back})


def test_a_task_that_met_the_outage_retried_and_ran_once_after_it_is_a_clean_row() -> None:
    row = _task_row(_retry(ONE_OFF), _retry(TICK, "guardrails.expire_reservations"), _ran(ONE_OFF),
                    _ran(TICK, "guardrails.expire_reservations"))

    assert row["problems"] == []
    assert (row["sent"], row["stored"], row["lost"], row["double_counted"], row["recovery_s"]) == (2, 2, 0, 0, 1.0)


@pytest.mark.parametrize(("lines", "met", "column"), [
    ((_retry(ONE_OFF),), True, "lost"),                                               # retried, never ran
    ((_retry(ONE_OFF), _ran(ONE_OFF), _ran(ONE_OFF, clock="41,000")), True, "double_counted"),  # ran twice
    ((_retry(ONE_OFF), _ran(ONE_OFF), _line("36,000", f"Task usage.rollup[{TICK}] raised unexpected: "
                                                       "OperationalError('the database system is shutting down')")),
     True, "lost"),                                                                   # failed without a retry
    ((_ran(ONE_OFF),), False, None),                                                  # ran, but never met the outage
])
def test_a_task_lost_run_twice_or_not_met_fails_the_row(lines: tuple[str, ...], met: bool, column: str | None) -> None:
    row = _task_row(*lines, met=met)

    assert row["problems"]
    if column is not None:
        assert row[column] >= 1
    assert appdrills.table([row]).splitlines()[-1].split("|")[-2].strip() == "FAIL"


def test_a_500_is_reported_with_the_servers_traceback() -> None:
    log = ("rate_limit_cache unavailable, failing open (1 failures so far in this process): ConnectionError: x\n"
           "Internal Server Error: /api/v1/events/batch\nTraceback (most recent call last):\n"
           '  File "x.py", line 1, in f\nValueError: boom\n')

    reports = appdrills.server_errors(log)

    assert len(reports) == 1
    assert reports[0].startswith("Internal Server Error: /api/v1/events/batch") and "ValueError: boom" in reports[0]
    assert appdrills.server_errors("nothing went wrong\n") == []
