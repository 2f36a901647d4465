"""Degrade, don't crash: Redis (cache and broker) at a closed port, and the database unreachable.

Redis down: every authenticated API call still answers (the rate limiter fails open, logged and counted),
ingest still stores and answers. The database down: 503 ``unavailable`` with Retry-After, JSON on the API,
the error page elsewhere; never a 500. The real restart of a PostgreSQL server is test_postgres_restart.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection

from billing.common import degraded
from billing.customers.models import CustomerUser
from billing.guardrails import alerts as alerts_service
from billing.usage.models import UsageEvent
from portal.celery import app as celery_app
from tests import factories
from tests.conftest import post_json
from tests.portal.processes import free_port

CLOSED = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


@pytest.fixture
def redis_down(settings: Any) -> Iterator[None]:
    """The cache and the broker both at a port nothing listens on, as when Redis is stopped."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CLOSED}}
    before = celery_app.conf.broker_url, celery_app.conf.task_always_eager
    celery_app.conf.broker_url, celery_app.conf.task_always_eager = CLOSED, False
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    alerts_service._QUEUED.clear()
    degraded.COUNTS.clear()
    degraded._last_logged.clear()
    yield
    celery_app.conf.broker_url, celery_app.conf.task_always_eager = before
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture
def rate_limited(settings: Any) -> None:
    settings.TOLLGATE_RATE_LIMIT_PER_SECOND = 5


@pytest.mark.django_db
def test_with_redis_down_the_rate_limiter_fails_open_logged_and_counted(redis_down, rate_limited, admin, acme, caplog):
    caplog.set_level(logging.WARNING, logger="tollgate.degraded")

    statuses = [admin.get("/api/v1/customers/acme-co").status_code for _ in range(20)]

    assert statuses == [200] * 20  # 20 > the limit of 5: nothing counted, nothing refused
    assert degraded.COUNTS["rate_limit_cache"] == 20
    lines = [r.getMessage() for r in caplog.records if r.name == "tollgate.degraded"]
    assert len(lines) == 1  # once per 10 s, not once per request
    assert lines[0].startswith("rate_limit_cache unavailable, failing open (1 failures so far in this process)")


@pytest.mark.django_db
def test_with_redis_up_the_rate_limiter_still_refuses(rate_limited, admin, acme):
    statuses = [admin.get("/api/v1/customers/acme-co").status_code for _ in range(30)]

    assert statuses[:5] == [200] * 5
    assert 429 in statuses  # windows are whole seconds: 30 requests fill one of them past 5


@pytest.mark.django_db(transaction=True)
@pytest.mark.ledger
def test_with_redis_down_ingest_of_a_subscribed_customer_stores_and_answers(redis_down, rate_limited, acme, make_client):
    # given a customer with a plan, so that ingest queues a soft-limit check after commit (cache + broker)
    factories.subscribe(acme, "metered", start=datetime(2026, 1, 1, tzinfo=timezone.utc), now=datetime.now(timezone.utc),
                        catalog_text=factories.metered(price="0.01", hard="1000000"))
    ingest = make_client("ingest")
    at = (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat()
    body = {"event_id": "e-1", "customer": "acme-co", "meter": "llm_tokens", "quantity": "10", "timestamp": at}

    response = post_json(ingest, "/api/v1/events", body)
    batch = post_json(ingest, "/api/v1/events/batch", {"events": [{**body, "event_id": "e-2"}]})

    assert response.status_code == 201, response.content
    assert batch.status_code == 200 and batch.json()["accepted"] == 1
    assert UsageEvent.objects.count() == 2
    assert degraded.COUNTS["alerts_cache"] >= 1
    assert degraded.COUNTS["broker"] >= 1  # the check could not be queued: logged, the sweep catches up


@contextlib.contextmanager
def database_unreachable() -> Iterator[None]:
    """The default connection pointed at nothing: a closed port on PostgreSQL, a missing folder on SQLite."""
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "postgresql":
        connection.settings_dict["PORT"] = str(free_port())
        connection.settings_dict["HOST"] = "127.0.0.1"
    else:
        connection.settings_dict["NAME"] = "/nonexistent-tollgate-dir/db.sqlite3"
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


@pytest.mark.django_db(transaction=True)
def test_with_the_database_down_the_api_answers_503_unavailable_with_retry_after(acme, make_client):
    admin, ingest = make_client("admin"), make_client("ingest")
    for client in (admin, ingest):
        client.raise_request_exception = False
    event = {"event_id": "e-1", "customer": "acme-co", "meter": "llm_tokens", "quantity": "1",
             "timestamp": datetime.now(timezone.utc).isoformat()}

    with database_unreachable():
        answers = [admin.get("/api/v1/customers/acme-co"), admin.get("/api/v1/events"),
                   post_json(ingest, "/api/v1/events", event), post_json(ingest, "/api/v1/events/batch", {"events": [event]})]

    for response in answers:
        assert response.status_code == 503, response.content
        assert response["Retry-After"] == "5"
        assert response.json()["error"]["code"] == "unavailable"
    assert admin.get("/api/v1/customers/acme-co").status_code == 200  # and back once it is


@pytest.mark.django_db(transaction=True)
def test_with_the_database_down_a_page_is_a_503_page(acme, client):
    user = User.objects.create_user("ann", password="pw-123456")
    CustomerUser.objects.create(user=user, customer=acme)
    client.force_login(user)
    client.raise_request_exception = False

    with database_unreachable():
        response = client.get("/dashboard/acme-co/")

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert b"unavailable" in response.content
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.django_db(transaction=True)
def test_with_the_database_down_a_json_request_outside_the_api_gets_json(client):
    client.raise_request_exception = False

    with database_unreachable():
        response = client.post("/webhooks/stripe", data=json.dumps({"id": "evt_1"}), content_type="application/json")

    assert response.status_code in (400, 503)  # a bad signature is refused before the database is asked
    assert response.json()["error"]["code"] in ("invalid_signature", "unavailable")
