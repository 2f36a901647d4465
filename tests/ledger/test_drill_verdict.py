"""The drills' verdict (bench/_drill.py ``check``, bench/drills.py ``phase_figures``) fails a run that lost an
event, debited one twice, missed the quota, or answered anything but 503 with Retry-After without quorum: the
slow drill passing means something only because these checks can fail."""

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
drills = _load("drills")


def _record(outcome: dict[str, str]) -> Any:
    record = drill.Record()
    record.outcome.update(outcome)
    return record


def _stored(rows: dict[str, list[Any]], used: int, reserved: str = "0") -> dict[str, Any]:
    return {"stored": rows, "duplicated_ids": 0, "swept": 0, "quota": {"used": str(used), "reserved": reserved}}


def test_a_clean_run_has_no_problem() -> None:
    record = _record({"a": "accepted", "b": "accepted", "c": "refused"})
    rows = {"a": [True, ""], "b": [True, ""], "c": [False, "rejected_quota_exceeded"]}
    figures, problems = drill.check(record, _stored(rows, 2), 2)
    assert problems == [] and figures["lost"] == figures["double_debited"] == 0


@pytest.mark.parametrize(("rows", "used", "limit", "expected"), [
    ({"a": [True, ""]}, 1, 1, "lost"),                                          # b accepted but not stored
    ({"a": [True, ""], "b": [True, ""]}, 3, 2, "debited 3"),                    # debited twice
    ({"a": [True, ""], "b": [True, ""]}, 2, 5, "quota not exact"),              # limit not reached
    ({"a": [True, ""], "b": [True, ""], "c": [True, ""]}, 3, 3, "no client was told"),
])
def test_a_broken_promise_is_reported(rows: dict[str, list[Any]], used: int, limit: int, expected: str) -> None:
    _figures, problems = drill.check(_record({"a": "accepted", "b": "accepted"}), _stored(rows, used), limit)
    assert any(expected in problem for problem in problems), problems


def test_an_answer_without_quorum_other_than_503_with_retry_after_is_reported() -> None:
    outage = {"name": "whole cluster killed for 20 s", "start": 100.0, "end": 120.0}
    record = drill.Record()
    record.answers += [drill.Answer(104.0, 503, "1"), drill.Answer(110.0, 200, None, accepted=10)]
    record.readyz += [(105.0, 503, "LedgerUnavailable"), (130.0, 200, "ok")]
    _report, problems = drills.phase_figures(record, [outage])
    assert any("without quorum: 2 answers, 1 not 503" in problem for problem in problems), problems

    record.answers.pop()
    record.readyz.insert(1, (111.0, 200, "ok"))  # /readyz claiming ready while no quorum
    _report, problems = drills.phase_figures(record, [outage])
    assert problems and all("/readyz without quorum" in problem for problem in problems), problems


def test_a_dropped_connection_is_a_problem_unless_a_worker_was_killed_on_purpose_then() -> None:
    crash = {"name": "app worker SIGKILLed 3 times, 2 s apart", "start": 200.0, "end": 212.0}
    record = drill.Record()
    record.answers += [drill.Answer(205.0, 0, None, detail="ConnectionResetError")]
    record.readyz += [(213.0, 200, "ok")]
    assert drills.phase_figures(record, [crash])[1] == []

    record.answers.append(drill.Answer(230.0, 0, None, detail="ConnectionResetError"))
    assert any("neither 200 nor 503" in problem for problem in drills.phase_figures(record, [crash])[1])
