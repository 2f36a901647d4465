"""Shared fixtures. Service-marked tests skip when the service is absent, and FAIL instead when
REQUIRE_SERVICES=1 (CI): a missing service must never turn into a silent green."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from billing.catalog.services import meter_create
from billing.customers.models import ApiKey, Customer
from billing.customers.services import api_key_create, customer_create

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "") not in ("", "0", "false")
CHROMIUM = os.environ.get("TOLLGATE_CHROMIUM", "/usr/bin/chromium")  # Debian's package; never a downloaded build


def _missing(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("postgres") and settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        _missing("this test needs PostgreSQL (set DATABASE_URL)")
    if item.get_closest_marker("tigerbeetle") and not os.environ.get("TIGERBEETLE_ADDRESSES"):
        _missing("this test needs a TigerBeetle replica (set TIGERBEETLE_ADDRESSES)")
    if item.get_closest_marker("redis") and not settings.REDIS_URL:
        _missing("this test needs Redis (set REDIS_URL)")
    if item.get_closest_marker("browser"):
        if not os.access(CHROMIUM, os.X_OK):
            _missing(f"this test needs Chromium at {CHROMIUM} (apt-get install chromium)")
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            _missing("this test needs the playwright package (make install)")


@pytest.fixture(autouse=True)
def _no_rate_limit(settings: Any) -> None:
    settings.TOLLGATE_RATE_LIMIT_PER_SECOND = 0
    settings.TOLLGATE_ANON_RATE_LIMIT_PER_MINUTE = 0  # tests/portal/test_abuse_limits.py turns it on


@pytest.fixture(autouse=True)
def _ledger_namespace() -> Any:
    """Every test derives its ledger ids in a namespace of its own: on a shared TigerBeetle replica, whose
    accounts and transfers outlive the test's database, no test meets another's (or an earlier run's)."""
    from ledger.ids import use_namespace

    with use_namespace(f"test-{secrets.token_hex(8)}"):
        yield


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    """Tests roll the database back and its ids repeat: nothing a process cached may outlive a test."""
    from django.core.cache import cache

    from billing.common import process_caches

    cache.clear()
    process_caches.clear_all()


@pytest.fixture
def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture
def tokens_meter(db: None) -> Any:
    return meter_create(key="llm_tokens", name="LLM tokens", unit="token", aggregation="sum")[0]


@pytest.fixture
def calls_meter(db: None) -> Any:
    return meter_create(key="api_calls", name="API calls", unit="call", aggregation="count")[0]


@pytest.fixture
def acme(db: None) -> Customer:
    return customer_create(external_id="acme-co", name="Acme")


@pytest.fixture
def globex(db: None) -> Customer:
    return customer_create(external_id="globex", name="Globex")


@pytest.fixture
def make_client(db: None) -> Callable[..., APIClient]:
    def make(scope: str = "admin", customer: Customer | None = None) -> APIClient:
        _, raw = api_key_create(name=f"test {scope}", scope=scope, customer=customer)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        client.raw_key = raw  # type: ignore[attr-defined]
        return client

    return make


@pytest.fixture
def ingest(make_client: Callable[..., APIClient]) -> APIClient:
    return make_client("ingest")


@pytest.fixture
def admin(make_client: Callable[..., APIClient]) -> APIClient:
    return make_client("admin")


def post_json(client: APIClient, path: str, body: Any) -> Any:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json")


@pytest.fixture
def event(now: datetime) -> Callable[..., dict[str, Any]]:
    def make(event_id: str = "evt-1", **overrides: Any) -> dict[str, Any]:
        body = {
            "event_id": event_id,
            "customer": "acme-co",
            "meter": "llm_tokens",
            "quantity": "1200",
            "timestamp": (now - timedelta(minutes=1)).isoformat(),
            "dimensions": {"model": "gpt-4o", "direction": "input"},
        }
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not None}

    return make


def stored_rows() -> list[tuple[Any, ...]]:
    """What the database holds: the ground truth for exactly-once assertions."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT customer_id, event_id, quantity, fingerprint FROM usage_event ORDER BY customer_id, event_id")
        return [tuple(str(v) for v in row) for row in cursor.fetchall()]


__all__ = ["ApiKey", "post_json", "stored_rows"]


@pytest.fixture(autouse=True)
def _books_balance(request: pytest.FixtureRequest) -> Any:
    """After every test that used the database: the SQL ledger's books balance (debits equal credits)."""
    yield
    uses_db = request.node.get_closest_marker("django_db") or {"db", "transactional_db"} & set(request.fixturenames)
    if not uses_db or settings.LEDGER_BACKEND != "sql":
        return
    from ledger.models import LedgerAccount

    accounts = list(LedgerAccount.objects.values_list("debits_posted", "credits_posted", "debits_pending", "credits_pending"))
    assert sum(a[0] for a in accounts) == sum(a[1] for a in accounts), "posted debits != posted credits"
    assert sum(a[2] for a in accounts) == sum(a[3] for a in accounts), "pending debits != pending credits"


@pytest.fixture
def celery_eager() -> Any:
    """Tasks queued (after commit, or by a sweep) run inline, in this process: no worker needed."""
    from portal.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before
