"""Edge cases found while documenting the API (each was wrong before its fix)."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command

from billing.customers.services import api_key_authenticate, api_key_create
from tests.billing.guardrails.test_limits_at_ingest import body, catalog, subscribe
from tests.conftest import post_json

pytestmark = [pytest.mark.django_db, pytest.mark.ledger]


@pytest.mark.parametrize("raw", [b"[]", b'{"events": [], "x": 1}', b'{"events": 5}'])
def test_batch_of_the_wrong_shape_is_invalid_shape_not_invalid_json(ingest, raw):
    response = post_json(ingest, "/api/v1/events/batch", raw)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_shape"


def test_a_refused_event_repeated_in_the_same_batch_is_refused_twice(acme, ingest):
    subscribe(acme, catalog(hard="5"))
    event = json.loads(body("big", "9"))

    results = post_json(ingest, "/api/v1/events/batch", {"events": [event, event]}).json()["results"]

    assert [r["status"] for r in results] == ["rejected", "rejected"]
    assert {r["error"]["code"] for r in results} == {"quota_exceeded"}


def test_a_refused_event_cannot_be_corrected(acme, ingest):
    subscribe(acme, catalog(hard="5"))
    assert post_json(ingest, "/api/v1/events", json.loads(body("big", "9"))).status_code == 402

    response = post_json(ingest, "/api/v1/events", json.loads(body("fix", "-9", corrects="big")))

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "original_not_billable"


def test_a_key_restricted_to_one_customer_cannot_change_the_catalog(acme, make_client, tokens_meter):
    restricted = make_client("admin", customer=acme)

    assert restricted.post("/api/v1/meters", {"key": "x", "aggregation": "sum"}, format="json").status_code == 403
    assert post_json(restricted, "/api/v1/plans", {"key": "p", "name": "P", "currency": "USD",
                                                   "effective_from": "2026-01-01T00:00:00Z"}).status_code == 403


def test_unknown_api_path_answers_json(admin):
    response = admin.get("/api/v1/nothing-here")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_an_unreachable_ledger_is_503_and_stores_nothing(acme, ingest, settings):
    subscribe(acme, catalog(hard="100"))
    settings.LEDGER_BACKEND = "tigerbeetle"
    settings.TIGERBEETLE_ADDRESSES = "127.0.0.1:1"
    settings.LEDGER_TIMEOUT_SECONDS = 0.3

    response = post_json(ingest, "/api/v1/events", json.loads(body("e", "1")))

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "ledger_unavailable"
    from billing.usage.models import UsageEvent

    assert not UsageEvent.objects.exists()


def test_apikey_revoke_accepts_what_list_prints():
    key, raw = api_key_create(name="k", scope="ingest")

    call_command("apikey", "revoke", f"tg_{key.prefix}_…", stdout=StringIO())

    assert api_key_authenticate(raw_key=raw) is None
