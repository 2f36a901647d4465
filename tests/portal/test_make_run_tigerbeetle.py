"""`make run` with TigerBeetle: the launcher formats and starts a production-mode replica beside web, worker and
beat, limited ingest answers 2xx/402 request after request (one ledger client per process, never exhausting the
replica's 32), and the running app rides out a replica crash: 503 with Retry-After while it is down, then
accepted again once it is back, without restarting the app."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from portal.devserver import start_tigerbeetle
from tests.portal.processes import free_port, pids_where

ROOT = Path(__file__).resolve().parents[2]
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "") not in ("", "0", "false")
SHARED_BINARY = ROOT.parent / "shared" / "tigerbeetle" / "tigerbeetle"
HARD_LIMIT = 50_000_000  # the demo plan's llm_tokens hard limit (seed_demo)

pytestmark = [pytest.mark.slow, pytest.mark.ledger]


def _binary() -> str:
    named = os.environ.get("TIGERBEETLE_BIN") or str(SHARED_BINARY)
    if os.path.isfile(named) and os.access(named, os.X_OK):
        return named
    reason = f"this test needs a tigerbeetle 0.17.9 binary (TIGERBEETLE_BIN or {SHARED_BINARY}); none at {named}"
    if REQUIRE_SERVICES:
        pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _replicas_on(data_file: Path) -> list[int]:
    def runs_it(entry: Path) -> bool:
        argv = (entry / "cmdline").read_bytes().split(b"\0")
        return b"start" in argv and str(data_file).encode() in argv

    return pids_where(runs_it)


class Launcher:
    """``python -m portal.devserver`` as ``make run`` starts it, in its own session, output to a log."""

    def __init__(self, env: dict[str, str], log: Path, port: int, *extra: str) -> None:
        self.log, self.base = log, f"http://127.0.0.1:{port}"
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "portal.devserver", "--port", str(port), *extra],
                                         cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, banner: str) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if banner in self.text():
                try:
                    if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            assert self.proc.poll() is None, self.text()
            time.sleep(0.3)
        pytest.fail(f"make run did not come up:\n{self.text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise


class Sender:
    """Limited ingest for acme-co, one request at a time: every tenth event is over the hard limit (402)."""

    def __init__(self, base: str, key: str, prefix: str) -> None:
        self.client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=20)
        self.prefix, self.sent = prefix, 0

    def send(self) -> tuple[int, bool, httpx.Response]:
        self.sent += 1
        over = self.sent % 10 == 0
        response = self.client.post("/api/v1/events", json={
            "event_id": f"{self.prefix}-{self.sent}", "customer": "acme-co", "meter": "llm_tokens",
            "quantity": str(HARD_LIMIT + 1 if over else 10), "timestamp": datetime.now(timezone.utc).isoformat(),
            "dimensions": {"model": "gpt-4o", "direction": "input"}})
        return self.sent, over, response

    @staticmethod
    def expected(over: bool, response: httpx.Response) -> bool:
        return response.status_code == (402 if over else 201)


def _describe(i: int, response: httpx.Response) -> str:
    return f"#{i}: {response.status_code} Retry-After={response.headers.get('Retry-After')} {response.text[:300]}"


def test_make_run_runs_tigerbeetle_and_the_app_survives_a_replica_crash(tmp_path: Path) -> None:
    binary = _binary()
    data_dir = tmp_path / "var"
    data_file = data_dir / "tigerbeetle" / "0_0.tigerbeetle"
    tb_port, web_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in {
        "DATABASE_URL", "REDIS_URL", "TIGERBEETLE_ADDRESSES", "TIGERBEETLE_CLUSTER_ID", "LEDGER_BACKEND",
        "DJANGO_SETTINGS_MODULE", "REQUIRE_SERVICES", "DJANGO_DEBUG"}}
    env.update({"TOLLGATE_DATA_DIR": str(data_dir), "TIGERBEETLE_BIN": binary, "TIGERBEETLE_PORT": str(tb_port),
                "PYTHONUNBUFFERED": "1", "DJANGO_DEBUG": "1"})
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)

    # 1. make run starts the replica itself (formatted once under TOLLGATE_DATA_DIR) and points the app at it
    first = Launcher(env, tmp_path / "run.log", web_port)
    try:
        first.wait_healthy("ingest API key")
        text = first.text()
        assert f"ledger                   : tigerbeetle 127.0.0.1:{tb_port}" in text, text
        key = re.search(r"ingest API key\s*:\s*(\S+)", text).group(1)  # type: ignore[union-attr]
        assert data_file.is_file() and len(_replicas_on(data_file)) == 1
        assert httpx.get(f"{first.base}/readyz", timeout=10).json()["checks"]["ledger"] == "ok"

        sender = Sender(first.base, key, "steady")
        wrong = []
        for _ in range(500):  # sequential: each request on a thread of its own (asgiref's, under uvicorn), all sharing one client
            i, over, response = sender.send()
            if not sender.expected(over, response):
                wrong.append(_describe(i, response))
        assert not wrong, f"{len(wrong)} of 500 limited requests not 201/402:\n" + "\n".join(wrong[:20])
    finally:
        first.stop()
    assert "stopped web, worker and beat" in first.text() and "stopped tigerbeetle" in first.text()
    assert _replicas_on(data_file) == [], first.text()

    # 2. the same data file and port, a replica we own (so that we can kill it), the app started as make run does
    #    with TIGERBEETLE_ADDRESSES already set (it then starts no replica of its own)
    replica, address, _ = start_tigerbeetle(binary, env, sys.executable)
    app_env = {**env, "TIGERBEETLE_ADDRESSES": address}
    second = Launcher(app_env, tmp_path / "run2.log", web_port, "--no-seed")
    try:
        second.wait_healthy("Tollgate is starting")
        assert f"ledger                   : tigerbeetle {address}" in second.text()
        sender = Sender(second.base, key, "crash")
        warm = [sender.send() for _ in range(50)]
        assert all(sender.expected(over, r) for _, over, r in warm), [_describe(i, r) for i, _, r in warm]

        replica.kill()  # kill -9
        replica.wait()
        outage: list[Any] = []
        down_until = time.monotonic() + 3
        while time.monotonic() < down_until:
            outage.append(sender.send())
        unexpected = [_describe(i, r) for i, _, r in outage
                      if not (r.status_code == 503 and r.headers.get("Retry-After"))]
        assert not unexpected, "while the replica is down, limited ingest must answer 503 with Retry-After:\n" + \
            "\n".join(unexpected[:20])

        replica, _, _ = start_tigerbeetle(binary, env, sys.executable)  # same file, same port
        recovered_at = None
        during: list[str] = []
        deadline = time.monotonic() + 30
        while recovered_at is None and time.monotonic() < deadline:
            i, over, response = sender.send()
            if sender.expected(over, response):
                recovered_at = i
            elif response.status_code == 503 and response.headers.get("Retry-After"):
                time.sleep(0.2)
            else:
                during.append(_describe(i, response))
        assert not during, "after the restart, only 503 with Retry-After may precede recovery:\n" + "\n".join(during)
        assert recovered_at is not None, f"the app did not recover within 30 s of the replica's restart:\n" \
                                         f"{second.text()[-3000:]}"
        after = [sender.send() for _ in range(100)]
        bad = [_describe(i, r) for i, over, r in after if not sender.expected(over, r)]
        assert not bad, f"recovered at #{recovered_at}, then:\n" + "\n".join(bad[:20])
        assert second.proc.poll() is None and "exited with" not in second.text(), second.text()  # no app restart
    finally:
        second.stop()
        if replica.poll() is None:
            replica.terminate()
            replica.wait(timeout=30)
    assert "stopped web, worker and beat" in second.text()
    assert "stopped tigerbeetle" not in second.text()  # not ours: make run leaves a replica it did not start alone
