"""Body sizes: the largest batch the contract allows is taken, anything larger is 413 in the contract's
error shape (never Django's HTML "Bad Request (400)"), and other endpoints keep a smaller limit."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from django.conf import settings

from billing.catalog.services import meter_create
from billing.customers.services import customer_create
from billing.usage.contract import batch_max_bytes, largest_event
from billing.usage.models import UsageEvent

pytestmark = pytest.mark.django_db
BATCH = "/api/v1/events/batch"


def test_the_largest_legal_batch_is_accepted_whole(ingest):
    # given a customer, project and meter with the longest ids the contract allows
    customer = customer_create(external_id="c" * 128, name="Long")
    customer.projects.create(key="p" * 128, name="Long")
    meter_create(key="m" * 64, name="Long", unit="unit", aggregation="sum")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    events = []
    for i in range(settings.TOLLGATE_BATCH_MAX):
        event = largest_event()
        event.pop("corrects")
        event.update(event_id=f"{i:0>128}", timestamp=stamp)
        events.append(event)
    body = json.dumps({"events": events}).encode()
    assert len(body) > 5_400_000  # the contract's largest batch, over Django's default 2.5 MiB

    response = ingest.post(BATCH, data=body, content_type="application/json")

    assert response.status_code == 200, response.content[:300]
    assert response.json()["accepted"] == settings.TOLLGATE_BATCH_MAX
    assert UsageEvent.objects.count() == settings.TOLLGATE_BATCH_MAX


def test_a_batch_over_the_limit_is_413_json(ingest):
    limit = batch_max_bytes(settings.TOLLGATE_BATCH_MAX)

    response = ingest.post(BATCH, data=b" " * (limit + 1), content_type="application/json")

    assert response.status_code == 413
    assert response.json() == {"error": {"code": "payload_too_large",
                                         "message": f"The body is larger than this endpoint takes ({limit} bytes)."}}


def test_a_batch_at_the_limit_is_read(ingest):
    limit = batch_max_bytes(settings.TOLLGATE_BATCH_MAX)

    response = ingest.post(BATCH, data=b" " * limit, content_type="application/json")

    assert response.status_code == 400  # read, and found not to be JSON
    assert response.json()["error"]["code"] == "invalid_json"


def test_other_endpoints_keep_the_smaller_limit(admin, settings):
    settings.TOLLGATE_BODY_MAX_BYTES = 1000

    response = admin.post("/api/v1/customers", data=b"{" + b" " * 1000 + b"}", content_type="application/json")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_a_page_over_the_limit_is_an_html_413(client, settings):
    settings.TOLLGATE_BODY_MAX_BYTES = 1000

    response = client.post("/accounts/login/", data={"username": "x" * 2000, "password": "y"})

    assert response.status_code == 413
    assert response["Content-Type"].startswith("text/html")
    assert b"payload_too_large" in response.content


def test_djangos_own_body_refusal_is_the_contracts_413_not_an_html_400(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10  # Django's check, if it is ever switched on again
    client.raise_request_exception = False

    response = client.post("/accounts/login/", data={"username": "x" * 100, "password": "y"})

    assert response.status_code == 413
    assert b"payload_too_large" in response.content
