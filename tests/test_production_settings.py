"""Production settings: with DEBUG off the secure defaults are on, and ``manage.py check --deploy`` is clean with
the production environment docs/deploy.md documents (read from the document, so the two cannot drift apart).
Each case runs Django in a process of its own, since settings are read once, at import."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def documented_production_env() -> dict[str, str]:
    """The ``/etc/tollgate/env`` of docs/deploy.md, variable by variable."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    block = re.search(r"`/etc/tollgate/env`:\n```sh\n(.*?)```", text, flags=re.S)
    assert block, "docs/deploy.md no longer shows /etc/tollgate/env"
    pairs = (line.split("=", 1) for line in block.group(1).splitlines() if "=" in line and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def _django_env(tmp_path: Path, **settings_env: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TOLLGATE_")) and k not in {
        "DATABASE_URL", "REDIS_URL", "TIGERBEETLE_ADDRESSES", "SECRET_KEY", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS"}}
    env.update({"TOLLGATE_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "portal.settings", **settings_env})
    return env


def test_check_deploy_is_clean_with_the_documented_production_environment(tmp_path: Path) -> None:
    documented = documented_production_env()
    assert documented["TOLLGATE_BEHIND_TLS_PROXY"] == "1" and "DJANGO_DEBUG" not in documented
    # what the document leaves for the reader to fill in ("...", "<the cluster id ...>")
    stand_ins = {"SECRET_KEY": secrets.token_urlsafe(50), "TIGERBEETLE_CLUSTER_ID": "7"}
    for name, value in documented.items():
        if "<" in value or value == "...":
            documented[name] = stand_ins[name]
    env = _django_env(tmp_path, **documented)
    env["TOLLGATE_DATA_DIR"] = str(tmp_path)

    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout, done.stdout + done.stderr
    assert "WARNINGS" not in done.stdout + done.stderr


def test_without_the_proxy_only_the_ssl_redirect_is_left_to_decide(tmp_path: Path) -> None:
    """Everything else is secure by default: a server without TLS in front only misses the redirect."""
    env = _django_env(tmp_path, SECRET_KEY=secrets.token_urlsafe(50))
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)

    assert re.findall(r"\(security\.W\d+\)", done.stdout + done.stderr) == ["(security.W008)"]


PROBE = """
import json, django
django.setup()
from django.test import Client
seen = {}
for name, path, headers in [("plain", "/accounts/login/", {}),
                            ("forwarded", "/accounts/login/", {"HTTP_X_FORWARDED_PROTO": "https"}),
                            ("probe", "/healthz", {}), ("docs", "/api/docs", {"HTTP_X_FORWARDED_PROTO": "https"}),
                            ("api", "/api/v1/meters", {"HTTP_X_FORWARDED_PROTO": "https"})]:
    response = Client().get(path, **headers)
    cookie = response.cookies.get("csrftoken")
    seen[name] = {"status": response.status_code, "location": response.get("Location"),
                  "secure": response.wsgi_request.is_secure(), "csrf_cookie_secure": bool(cookie and cookie["secure"]),
                  "hsts": response.get("Strict-Transport-Security"), "csp": response.get("Content-Security-Policy")}
print(json.dumps(seen))
"""


def probe(tmp_path: Path, **settings_env: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=_django_env(tmp_path, **settings_env),
                         capture_output=True, text=True, check=True, timeout=120)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_behind_the_tls_proxy_https_is_trusted_plain_http_redirected_and_hsts_sent(tmp_path: Path) -> None:
    seen = probe(tmp_path, TOLLGATE_BEHIND_TLS_PROXY="1")

    assert seen["plain"]["status"] == 301 and seen["plain"]["location"] == "https://testserver/accounts/login/"
    forwarded = seen["forwarded"]
    assert forwarded["status"] == 200 and forwarded["secure"] and forwarded["csrf_cookie_secure"]
    assert forwarded["hsts"] == "max-age=31536000; includeSubDomains"
    assert seen["probe"]["status"] == 200  # health probes ask over plain HTTP from inside: never redirected


def test_without_the_proxy_a_clients_forwarded_proto_is_ignored_but_cookies_stay_secure(tmp_path: Path) -> None:
    seen = probe(tmp_path)

    assert seen["plain"]["status"] == 200 and seen["plain"]["csrf_cookie_secure"]
    forwarded = seen["forwarded"]
    assert not forwarded["secure"] and forwarded["hsts"] is None  # a client cannot claim https


def test_hsts_is_configurable_and_debug_turns_the_secure_defaults_off(tmp_path: Path) -> None:
    tuned = probe(tmp_path / "a", TOLLGATE_BEHIND_TLS_PROXY="1", TOLLGATE_HSTS_SECONDS="300",
                  TOLLGATE_HSTS_INCLUDE_SUBDOMAINS="0")
    assert tuned["forwarded"]["hsts"] == "max-age=300"
    assert probe(tmp_path / "b", TOLLGATE_BEHIND_TLS_PROXY="1", TOLLGATE_HSTS_PRELOAD="1")["forwarded"]["hsts"] == \
        "max-age=31536000; includeSubDomains; preload"

    debug = probe(tmp_path / "c", DJANGO_DEBUG="1")
    assert debug["plain"]["status"] == 200 and not debug["plain"]["csrf_cookie_secure"]
    assert not probe(tmp_path / "d", TOLLGATE_SECURE_COOKIES="0")["plain"]["csrf_cookie_secure"]


def test_every_answer_carries_the_content_security_policy(tmp_path: Path) -> None:
    seen = probe(tmp_path, TOLLGATE_BEHIND_TLS_PROXY="1")

    for name in ("forwarded", "docs", "api", "probe"):
        policy = seen[name]["csp"]
        assert policy and "script-src 'self';" in policy and "frame-ancestors 'none'" in policy, (name, policy)
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert seen["docs"]["status"] == 200


@pytest.mark.django_db
def test_the_pages_hold_no_inline_script_or_style(client: Any, django_user_model: Any) -> None:
    """What the policy forbids is not in the markup; tests/portal/test_csp_browser.py loads the pages in a browser."""
    staff = django_user_model.objects.create_user("ops", password="pw-ops-123456", is_staff=True, is_superuser=True)
    client.force_login(staff)
    for path in ("/accounts/login/", "/console/", "/dashboard/", "/api/docs", "/admin/"):
        page = client.get(path, follow=True).content.decode()
        assert not re.search(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", page), path
        assert "<style" not in page and " style=" not in page and " on" + "click=" not in page, path
