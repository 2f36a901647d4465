"""`make run` end to end: the embedded default (no settings at all) serves web + worker + beat, prints a
working ingest key, and Ctrl-C stops all three."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from tests.portal.processes import free_port, pids_where

ROOT = Path(__file__).resolve().parents[2]


def _processes_using(data_dir: str) -> list[int]:
    return pids_where(lambda entry: data_dir.encode() in (entry / "environ").read_bytes())


@pytest.mark.slow
def test_make_run_serves_accepts_an_event_runs_beat_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    data_dir = str(tmp_path / "var")
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "TIGERBEETLE_ADDRESSES",
                                                              "LEDGER_BACKEND", "DJANGO_SETTINGS_MODULE", "REQUIRE_SERVICES"}}
    # TIGERBEETLE_BIN empty: no replica even with a tigerbeetle on PATH (test_make_run_tigerbeetle.py runs one)
    env.update({"TOLLGATE_DATA_DIR": data_dir, "TOLLGATE_HEARTBEAT_SECONDS": "1", "PYTHONUNBUFFERED": "1",
                "TIGERBEETLE_BIN": ""})
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["make", "--no-print-directory", "run", f"PORT={port}"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        key = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            match = re.search(r"ingest API key\s*:\s*(\S+)", log.read_text())
            if match:
                key = match.group(1)
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            assert proc.poll() is None, log.read_text()
            time.sleep(0.3)
        else:
            pytest.fail(f"make run did not come up:\n{log.read_text()}")
        text = log.read_text()
        assert "operator" in text and "acme" in text  # the demo logins are printed
        assert re.search(r"ledger\s*:\s*sql ", text), text

        stamp = datetime.now(timezone.utc).isoformat()
        response = httpx.post(f"{base}/api/v1/events", headers={"Authorization": f"Bearer {key}"}, json={
            "event_id": "smoke-1", "customer": "acme-co", "meter": "llm_tokens", "quantity": "42", "timestamp": stamp})
        assert response.status_code == 201, response.text

        # beat schedules the heartbeat, the worker runs it: both are really running
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = httpx.get(f"{base}/readyz", timeout=5).json()
            if ready.get("last_beat"):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no heartbeat from beat + worker:\n{log.read_text()}")
        assert ready["status"] == "ready"
        assert len(_processes_using(data_dir)) >= 3
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    deadline = time.monotonic() + 20
    while _processes_using(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_using(data_dir) == [], log.read_text()
    assert "stopped web, worker and beat" in log.read_text()
