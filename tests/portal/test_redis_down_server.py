"""Redis down, as an operator sees it: gunicorn started with ``REDIS_URL`` at a port nothing listens on (the
cache and the broker both gone), the rate limiter on. Every authenticated call answers, ingest stores and
answers, the limiter fails open with a log line, and /readyz says the broker is the problem."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from tests.portal.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.mark.slow
def test_with_redis_unreachable_the_api_and_ingest_still_answer(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "TIGERBEETLE_ADDRESSES", "LEDGER_BACKEND",
                                                              "DJANGO_SETTINGS_MODULE", "DJANGO_DEBUG"}}
    env.update({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "TOLLGATE_DATA_DIR": str(tmp_path / "var"),
                "TOLLGATE_RATE_LIMIT_PER_SECOND": "5", "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    subprocess.run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    setup = ("from datetime import datetime, timezone\n"
             "from billing.catalog.services import catalog_import, subscription_set\n"
             "from billing.catalog.models import Plan\n"
             "from billing.customers.services import api_key_create, customer_create\n"
             "acme = customer_create(external_id='acme-co', name='Acme')\n"
             "catalog_import(text='''meters:\n  - {key: llm_tokens, name: T, unit: token, aggregation: sum}\n"
             "plans:\n  - {key: pro, name: Pro, currency: USD, effective_from: '2024-01-01T00:00:00Z', base_fee: '1',"
             " charges: [{meter: llm_tokens, model: per_unit, unit_price: '0.01'}],"
             " limits: [{meter: llm_tokens, hard: 1000000}]}\n''', actor='t')\n"
             "subscription_set(customer=acme, plan=Plan.objects.get(key='pro'), start=datetime(2026, 1, 1,"
             " tzinfo=timezone.utc), now=datetime.now(timezone.utc), actor='t')\n"
             "print(api_key_create(name='t', scope='admin')[1])\n")
    key = subprocess.run([PY, "manage.py", "shell", "-c", setup], cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True).stdout.split()[-1]
    port, log = free_port(), tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        web = subprocess.Popen([PY, "-m", "gunicorn", "portal.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1", "-k", "gthread",
                                "--threads", "2"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        at = (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat()

        reads = [httpx.get(f"{base}/api/v1/customers/acme-co", headers=headers, timeout=30).status_code for _ in range(12)]
        single = httpx.post(f"{base}/api/v1/events", headers=headers, timeout=30, json={
            "event_id": "e-1", "customer": "acme-co", "meter": "llm_tokens", "quantity": "10", "timestamp": at})
        batch = httpx.post(f"{base}/api/v1/events/batch", headers=headers, timeout=30, json={"events": [{
            "event_id": "e-2", "customer": "acme-co", "meter": "llm_tokens", "quantity": "10", "timestamp": at}]})
        listed = httpx.get(f"{base}/api/v1/events", headers=headers, timeout=30)
        ready = httpx.get(f"{base}/readyz", timeout=30)

        assert reads == [200] * 12  # over the limit of 5 a second: the limiter failed open
        assert single.status_code == 201, single.text
        assert batch.status_code == 200 and batch.json()["accepted"] == 1, batch.text
        assert sorted(e["event_id"] for e in listed.json()["data"]) == ["e-1", "e-2"]
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"] != "ok" and ready.json()["checks"]["database"] == "ok"
        text = log.read_text()
        assert "rate_limit_cache unavailable, failing open" in text
        assert "Traceback" not in text
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=30)
