"""The quick drill of ``make drills`` (bench/drills.py): gunicorn on PostgreSQL and a three-replica TigerBeetle
cluster on loopback, 4 retrying clients sending limited batches while a backup replica is SIGKILLed and
restarted, then while a gunicorn worker is SIGKILLed in the middle of its requests (whatever step of the
event-row/debit protocol it was in); then the hard limit is set through the API and filled to the last unit.
Nothing accepted is lost, nothing is debited twice, the quota ends exact, ingest goes on while two replicas of
three answer, and the app rides out the replica's crash without a restart. The full drill (the primary, then
the whole cluster for 20 s) is `make drills`."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "") not in ("", "0", "false")
SHARED_BINARY = ROOT.parent / "shared" / "tigerbeetle" / "tigerbeetle"

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _binary() -> str:
    named = os.environ.get("TIGERBEETLE_BIN") or str(SHARED_BINARY)
    if os.path.isfile(named) and os.access(named, os.X_OK):
        return named
    reason = f"the drill needs a tigerbeetle 0.17.9 binary (TIGERBEETLE_BIN or {SHARED_BINARY}); none at {named}"
    if REQUIRE_SERVICES:
        pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _drills() -> ModuleType:
    spec = importlib.util.spec_from_file_location("drills", ROOT / "bench" / "drills.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_replica_then_app_workers_killed_under_limited_ingest_lose_nothing_and_debit_nothing_twice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIGERBEETLE_BIN", _binary())
    drills = _drills()

    results = drills.main(["--schedule", "quick", "--drills", "ledger", "--database-url", os.environ["DATABASE_URL"],
                           "--hold", "4", "--settle", "3", "--app-kills", "2"])

    assert results["problems"] == []
    totals = results["totals"]
    assert totals["accepted"] > 1000 and totals["refused"] > 0
    assert totals["lost"] == totals["stored_not_accepted"] == totals["duplicated_ids"] == 0
    assert totals["ledger_used"] == totals["stored_billable"] == totals["accepted"] == totals["limit"]  # exact
    assert totals["double_debited"] == 0 and totals["ledger_reserved"] == 0
    down = next(phase for phase in results["phases"] if phase["phase"].startswith("backup") and "SIGKILLed" in phase["phase"])
    assert down["events_accepted"] > 0  # two replicas of three are a quorum: ingest went on meanwhile
    assert set(down["answers"]) <= {"200", "503"}
    crash = next(phase for phase in results["phases"] if phase["phase"].startswith("app worker"))
    assert crash["events_accepted"] > 0 and set(crash["answers"]) <= {"200", "503", "0"}  # 0: the killed worker's drops
