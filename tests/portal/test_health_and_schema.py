from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from portal.models import Heartbeat
from portal.tasks import heartbeat

pytestmark = [pytest.mark.django_db, pytest.mark.ledger]


def test_healthz_answers_without_auth(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_checks_database_broker_ledger_and_beat(client):
    heartbeat.apply()

    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "ledger": "ok", "beat": "ok"}


def test_readyz_does_not_judge_the_beat_before_the_first_heartbeat(client):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["last_beat"] is None
    assert response.json()["checks"]["beat"] == "ok"


def test_readyz_judges_the_last_beat_against_twice_its_interval(client, settings):
    settings.TOLLGATE_HEARTBEAT_SECONDS = 60
    Heartbeat.objects.create(name="beat", seen_at=timezone.now() - timedelta(seconds=119))
    assert client.get("/readyz").status_code == 200

    Heartbeat.objects.filter(name="beat").update(seen_at=timezone.now() - timedelta(seconds=125))
    response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["beat"].startswith("the last heartbeat is 125 s old (more than 120 s)")
    assert body["checks"]["database"] == "ok"


def test_readyz_is_503_when_the_ledger_is_unreachable(client, settings):
    settings.LEDGER_BACKEND = "tigerbeetle"
    settings.TIGERBEETLE_ADDRESSES = "127.0.0.1:1"  # nothing listens there
    settings.LEDGER_TIMEOUT_SECONDS = 0.5

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["ledger"] != "ok"


def test_heartbeat_task_records_the_beat(client):
    heartbeat.apply()

    assert client.get("/readyz").json()["last_beat"] is not None


@pytest.mark.redis
def test_with_redis_the_cache_and_broker_are_redis(client, settings):
    from portal.celery import app

    assert settings.CACHES["default"]["BACKEND"].endswith("RedisCache")
    assert app.conf.broker_url.startswith("redis://")
    cache.set("tollgate-probe", 1)
    assert cache.get("tollgate-probe") == 1
    assert client.get("/readyz").json()["checks"]["broker"] == "ok"


def test_openapi_schema_describes_the_api(client):
    response = client.get("/api/v1/schema", HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    for path in ("/api/v1/events", "/api/v1/events/batch", "/api/v1/meters", "/api/v1/customers",
                 "/api/v1/customers/{customer_id}", "/api/v1/customers/{customer_id}/usage"):
        assert path in schema["paths"], path
    assert "ApiKey" in schema["components"]["securitySchemes"]


def test_the_schema_is_valid_openapi_and_generates_without_a_warning(tmp_path):
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))

    assert "/api/v1/events" in (tmp_path / "schema.yaml").read_text()


def test_every_operation_documents_the_contract_error_body(client):
    schema = client.get("/api/v1/schema?format=json").json()

    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            errors = {status: response for status, response in operation["responses"].items() if status >= "400"}
            assert {"400", "401", "403", "429", "503"} <= set(errors), (method, path)
            for response in errors.values():
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_api_docs_page_is_served_without_a_cdn(client):
    response = client.get("/api/docs")

    assert response.status_code == 200
    assert b"cdn." not in response.content and b"jsdelivr" not in response.content


def test_the_root_address_leads_staff_to_the_console_and_everyone_else_to_a_login_or_dashboard(client):
    from django.contrib.auth import get_user_model

    anonymous = client.get("/", follow=True)
    assert anonymous.redirect_chain[0] == ("/dashboard/", 302)
    assert anonymous.redirect_chain[-1][0].startswith("/accounts/login/")

    get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True)
    client.login(username="ops", password="pw-123456")
    assert client.get("/")["Location"] == "/console/"
