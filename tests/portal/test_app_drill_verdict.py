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
