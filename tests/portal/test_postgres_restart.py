"""A real PostgreSQL restart under a real server: gunicorn on a PostgreSQL cluster of this test's own, which
the test stops (fast shutdown: connections cut) and starts again. While it is down the API answers 503
``unavailable`` with Retry-After, never 500; once it is back, the same processes answer again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from tests.conftest import _missing
from tests.portal.processes import OwnPostgres, free_port, pg_bin

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    if pg_bin("initdb") is None or pg_bin("pg_ctl") is None:
        _missing("this test needs the PostgreSQL server binaries (initdb, pg_ctl)")
    folder = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
    folder.chmod(0o755)  # the postgres user (when run as root) reaches its cluster inside
    server = OwnPostgres(folder / "pg", free_port())
    server.init()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _env(database_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "TIGERBEETLE_ADDRESSES", "LEDGER_BACKEND",
                                                              "DJANGO_SETTINGS_MODULE", "DJANGO_DEBUG"}}
    env.update({"DATABASE_URL": database_url, "TOLLGATE_DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"})
    return env


@pytest.mark.postgres
@pytest.mark.slow
def test_a_postgresql_restart_answers_503_unavailable_then_recovers(own_postgres, tmp_path):
    env = _env(own_postgres.url, tmp_path / "var")
    subprocess.run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    make_key = ("from billing.customers.services import api_key_create, customer_create\n"
                "from billing.catalog.services import meter_create\n"
                "customer_create(external_id='acme-co', name='Acme')\n"
                "meter_create(key='llm_tokens', name='LLM tokens', unit='token', aggregation='sum')\n"
                "print(api_key_create(name='t', scope='admin')[1])\n")
    key = subprocess.run([PY, "manage.py", "shell", "-c", make_key], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.split()[-1]
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        web = subprocess.Popen([PY, "-m", "gunicorn", "portal.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1",
                                "-k", "gthread", "--threads", "2"], cwd=ROOT, env=env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}

    def event(n: int) -> dict[str, str]:
        return {"event_id": f"e-{n}", "customer": "acme-co", "meter": "llm_tokens", "quantity": "1",
                "timestamp": datetime.now(timezone.utc).isoformat()}

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/v1/customers/acme-co", headers=headers, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        assert httpx.post(f"{base}/api/v1/events", json=event(1), headers=headers).status_code == 201

        # when PostgreSQL stops (connections cut)
        own_postgres.stop()
        down = [httpx.get(f"{base}/api/v1/customers/acme-co", headers=headers, timeout=10),
                httpx.post(f"{base}/api/v1/events", json=event(2), headers=headers, timeout=10),
                httpx.post(f"{base}/api/v1/events/batch", json={"events": [event(3)]}, headers=headers, timeout=10),
                httpx.get(f"{base}/api/v1/events", headers=headers, timeout=10)]

        # then every answer is 503 unavailable with Retry-After, never a 500
        for response in down:
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "unavailable"
            assert response.headers["Retry-After"] == "5"
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 503

        # and once it is back, the same process answers again, and the retried event is stored once
        own_postgres.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/api/v1/customers/acme-co", headers=headers, timeout=10).status_code != 200:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert httpx.post(f"{base}/api/v1/events", json=event(2), headers=headers).status_code == 201
        listed = httpx.get(f"{base}/api/v1/events", headers=headers).json()["data"]
        assert sorted(e["event_id"] for e in listed) == ["e-1", "e-2"]
        assert web.poll() is None
        assert b"Traceback" not in log.read_bytes()
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=30)
