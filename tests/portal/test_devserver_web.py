"""``make run``'s web process as it really runs: the devserver's web command (uvicorn on ``portal.asgi``) in a
process of its own on a free port, on a fresh SQLite database seeded as ``make run`` seeds it, with the gateway
pointed at a fake OpenAI-compatible upstream. Pages (login with its CSRF token, dashboard, HTMX partial,
console, invoice page and PDF), static files, the API and the gateway (whole and streamed, driven by the
official ``openai`` client) all answer through it, and SIGTERM stops it cleanly."""

from __future__ import annotations

import contextlib
import csv
import io
import json
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
import openai
import pytest

from portal.devserver import web_command
from tests.portal.processes import free_port
from tests.portal.test_gateway import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]


def _env(data_dir: Path, upstream: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "TIGERBEETLE_ADDRESSES",
                                                            "LEDGER_BACKEND", "DJANGO_SETTINGS_MODULE", "REQUIRE_SERVICES"}}
    env.update({"TOLLGATE_DATA_DIR": str(data_dir), "DJANGO_DEBUG": "1", "PYTHONUNBUFFERED": "1",
                "GATEWAY_UPSTREAM_URL": upstream, "GATEWAY_UPSTREAM_KEY": "sk-upstream"})
    return env


def _login(base: str, username: str, password: str) -> httpx.Client:
    """A browser-like client logged in through the login form (its CSRF token first)."""
    browser = httpx.Client(base_url=base, timeout=60)
    form = browser.get("/accounts/login/")
    assert form.status_code == 200
    answer = browser.post("/accounts/login/", data={"username": username, "password": password,
                                                    "csrfmiddlewaretoken": _csrf(form.text)})
    assert answer.status_code == 302, answer.text[:500]
    return browser


def _csrf(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


def _wait_healthy(web: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert web.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the web process did not answer:\n{log.read_text()}")


def _check_pages(base: str, info: dict[str, Any]) -> str:
    """The customer's pages and the operator's console; returns a gateway key issued from the dashboard."""
    customer = info["customer_login"]
    with contextlib.closing(_login(base, customer["username"], customer["password"])) as browser:
        overview = browser.get("/dashboard/acme-co/")
        assert overview.status_code == 200 and "<html" in overview.text
        static = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', overview.text))
        assert {"/static/css/tollgate.css", "/static/js/tollgate.js"} <= static
        for path in static:  # the stylesheets, our script and htmx (django-htmx's own static file)
            assert browser.get(path).status_code == 200, path
        glance = browser.get("/dashboard/acme-co/glance", headers={"HX-Request": "true"})
        assert glance.status_code == 200 and 'id="glance"' in glance.text and "<html" not in glance.text
        invoice = info["last_month_invoice"].rstrip("/")
        assert browser.get(f"{invoice}/").status_code == 200
        pdf = browser.get(f"{invoice}.pdf")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF"), pdf.text[:300]
        settings_page = browser.get("/dashboard/acme-co/settings/")
        issued = browser.post("/dashboard/acme-co/settings/gateway-keys",
                              data={"name": "asgi app", "csrfmiddlewaretoken": _csrf(settings_page.text)})
        assert issued.status_code == 200, issued.text[:500]
        key = re.search(r'id="new-gateway-key">[^<]*<code>(tg_[^<]+)</code>', issued.text)
        assert key, issued.text[:2000]
    operator = info["operator_login"]
    with contextlib.closing(_login(base, operator["username"], operator["password"])) as console:
        page = console.get("/console/")
        assert page.status_code == 200 and "acme-co" in console.get("/console/customers/").text
    return key.group(1)


def _check_static(base: str) -> None:
    for path, source in [("/static/css/tollgate.css", ROOT / "static/css/tollgate.css"),
                         ("/static/js/tollgate.js", ROOT / "static/js/tollgate.js")]:
        answer = httpx.get(base + path, timeout=30)
        assert answer.status_code == 200 and answer.content == source.read_bytes(), path
    admin = httpx.get(f"{base}/static/admin/css/base.css", timeout=30)  # an app's static file, as found
    assert admin.status_code == 200 and admin.headers["content-type"].startswith("text/css")


def _check_gateway(base: str, key: str, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=f"{base}/gateway/v1", api_key=key, max_retries=0, timeout=60)
    whole = client.chat.completions.create(model="asgi-check", messages=[{"role": "user", "content": "Hi"}])
    assert whole.choices[0].message.content == "Hello there"
    assert whole.usage is not None and whole.usage.total_tokens == 16
    stream = client.chat.completions.create(model="asgi-check", messages=[{"role": "user", "content": "Hi"}],
                                            stream=True)
    words = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert words == "one two three four"
    assert [r["path"] for r in upstream.requests] == ["/v1/chat/completions"] * 2
    assert {r["auth"] for r in upstream.requests} == {"Bearer sk-upstream"}


def _gateway_usage(base: str, read_key: str) -> dict[str, str]:
    """The streamed usage CSV (a sync generator served under ASGI): the gateway's tokens by direction."""
    now = datetime.now(timezone.utc)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    answer = httpx.get(f"{base}/api/v1/customers/acme-co/usage.csv", timeout=60,
                       headers={"Authorization": f"Bearer {read_key}"},
                       params={"meter": "llm_tokens", "granularity": "month", "group_by": "model,direction",
                               "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": end.strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert answer.status_code == 200, answer.text
    return {row["direction"]: row["quantity"] for row in csv.DictReader(io.StringIO(answer.text))
            if row["model"] == "asgi-check"}


@pytest.mark.slow
def test_the_web_command_serves_pages_static_files_the_api_and_the_gateway(tmp_path: Path) -> None:
    upstream = FakeUpstream()
    env = _env(tmp_path / "var", upstream.url)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    seeded = subprocess.run([sys.executable, "manage.py", "seed_demo", "--json"], cwd=ROOT, env=env, check=True,
                            capture_output=True, text=True)
    info = json.loads(seeded.stdout.strip().splitlines()[-1])
    port, log = free_port(), tmp_path / "web.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        web = subprocess.Popen(web_command(sys.executable, "127.0.0.1", port), cwd=ROOT, env=env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(web, base, log)
        assert b"uvicorn" in Path(f"/proc/{web.pid}/cmdline").read_bytes()
        gateway_key = _check_pages(base, info)
        _check_static(base)

        event = httpx.post(f"{base}/api/v1/events", headers={"Authorization": f"Bearer {info['ingest_api_key']}"},
                           timeout=30, json={"event_id": "asgi-1", "customer": "acme-co", "meter": "llm_tokens",
                                             "quantity": 1200, "timestamp": datetime.now(timezone.utc).isoformat(),
                                             "dimensions": {"model": "gpt-4o"}})
        assert event.status_code == 201, event.text
        balance = httpx.get(f"{base}/api/v1/customers/acme-co/balance", timeout=30,
                            headers={"Authorization": f"Bearer {info['read_api_key']}"})
        assert balance.status_code == 200 and "credits" in balance.json(), balance.text

        _check_gateway(base, gateway_key, upstream)
        # the upstream's usage, billed exactly: 11 + 13 in, 5 + 4 out
        assert _gateway_usage(base, info["read_api_key"]) == {"input": "24", "output": "9"}
    finally:
        web.send_signal(signal.SIGTERM)
        try:
            web.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(web.pid, signal.SIGKILL)
            web.wait()
        upstream.close()
    text = log.read_text()
    assert web.returncode in (0, -signal.SIGTERM) and "Finished server process" in text, text  # a graceful stop
    assert "Traceback" not in text and "synchronous iterators" not in text, text
    assert '"GET /static/css/tollgate.css HTTP/1.1" 200' in text  # uvicorn's access log
