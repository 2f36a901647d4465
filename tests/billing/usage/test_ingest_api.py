"""The ingest path, status code by status code (contract.md, "Errors" and "Usage events")."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from billing.customers.models import ApiKey
from billing.customers.services import api_key_revoke
from billing.usage.models import UsageEvent
from tests.conftest import post_json, stored_rows

pytestmark = pytest.mark.django_db
EVENTS = "/api/v1/events"
BATCH = "/api/v1/events/batch"


@pytest.fixture(autouse=True)
def _catalog(acme, tokens_meter, calls_meter):
    acme.projects.create(key="chatbot", name="Chatbot")


def test_new_event_is_accepted_with_201_and_stored_exactly(ingest, event):
    response = post_json(ingest, EVENTS, event(quantity="0.000000000000000001"))

    assert response.status_code == 201
    assert response.json() == {"event_id": "evt-1", "status": "accepted"}
    stored = UsageEvent.objects.get(event_id="evt-1")
    assert stored.quantity == Decimal("0.000000000000000001")


def test_same_event_again_is_a_duplicate_and_counted_once(ingest, event):
    post_json(ingest, EVENTS, event())

    response = post_json(ingest, EVENTS, event())

    assert response.status_code == 200
    assert response.json() == {"event_id": "evt-1", "status": "duplicate"}
    assert UsageEvent.objects.filter(event_id="evt-1").count() == 1


def test_equivalent_body_spelled_differently_is_a_duplicate(ingest, event, now):
    post_json(ingest, EVENTS, event(quantity="1200", timestamp="2026-11-24T10:00:00+00:00"))

    # number instead of string, trailing zeros, the same instant in another offset, keys reordered
    respelled = {"timestamp": "2026-11-24T11:00:00+01:00", "quantity": 1200.0, **{
        k: v for k, v in event().items() if k not in ("quantity", "timestamp")}}
    response = post_json(ingest, EVENTS, respelled)

    assert response.status_code == 200
    assert response.json()["status"] == "duplicate"


def test_reused_event_id_with_another_body_is_409(ingest, event):
    post_json(ingest, EVENTS, event(quantity="1200"))

    response = post_json(ingest, EVENTS, event(quantity="1201"))

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"
    assert UsageEvent.objects.get(event_id="evt-1").quantity == Decimal("1200")


def test_same_event_id_for_two_customers_is_two_events(ingest, event, globex):
    post_json(ingest, EVENTS, event())
    response = post_json(ingest, EVENTS, event(customer="globex"))

    assert response.status_code == 201
    assert UsageEvent.objects.filter(event_id="evt-1").count() == 2


@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        ({"customer": "nobody"}, "unknown_customer", "customer"),
        ({"meter": "no_such_meter"}, "unknown_meter", "meter"),
        ({"project": "nope"}, "unknown_project", "project"),
        ({"quantity": "-1"}, "validation_error", "quantity"),
        ({"quantity": "NaN"}, "validation_error", "quantity"),
        ({"quantity": "Infinity"}, "validation_error", "quantity"),
        ({"quantity": "abc"}, "validation_error", "quantity"),
        ({"quantity": "0.0000000000000000001"}, "validation_error", "quantity"),  # 19 places: never rounded
        ({"quantity": "1" + "0" * 20}, "validation_error", "quantity"),
        ({"quantity": None}, "validation_error", "quantity"),  # sum meter: quantity required
        ({"timestamp": "2026-11-24T10:00:00"}, "validation_error", "timestamp"),  # no offset
        ({"timestamp": "yesterday"}, "validation_error", "timestamp"),
        ({"timestamp": "2026-02-29T00:00:00Z"}, "validation_error", "timestamp"),  # not a leap year
        ({"event_id": ""}, "validation_error", "event_id"),
        ({"event_id": "x" * 129}, "validation_error", "event_id"),
        ({"dimensions": {f"k{i}": "v" for i in range(17)}}, "validation_error", "dimensions"),
        ({"dimensions": {"model": 4}}, "validation_error", "dimensions"),
        ({"schema_version": 2}, "validation_error", "schema_version"),
        ({"unexpected": 1}, "validation_error", "unexpected"),
        ({"customer": None}, "validation_error", "customer"),
        ({"corrects": "missing-original", "quantity": "-5"}, "unknown_original", "corrects"),
    ],
)
def test_well_formed_but_invalid_event_is_422_naming_the_field(ingest, event, overrides, code, field):
    response = post_json(ingest, EVENTS, event(**overrides))

    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["code"] == code
    assert field in error["fields"]
    assert UsageEvent.objects.count() == 0


def test_timestamp_more_than_five_minutes_ahead_is_422(ingest, event, now):
    ok = post_json(ingest, EVENTS, event("soon", timestamp=(now + timedelta(minutes=4)).isoformat()))
    late = post_json(ingest, EVENTS, event("later", timestamp=(now + timedelta(minutes=6)).isoformat()))

    assert ok.status_code == 201
    assert late.status_code == 422
    assert "timestamp" in late.json()["error"]["fields"]


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'"text"', b"42"])
def test_body_that_is_not_a_json_object_is_400(ingest, body):
    response = post_json(ingest, EVENTS, body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] in {"invalid_json", "invalid_shape"}


def test_missing_key_is_401(client, event):
    response = post_json(client, EVENTS, event())

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer tg_000000000000_nope", "Bearer garbage", "Basic dXNlcjpwYXNz", "Bearer"])
def test_unknown_or_malformed_key_is_401(client, event, header):
    response = client.post(EVENTS, data=event(), content_type="application/json", HTTP_AUTHORIZATION=header)

    assert response.status_code == 401


def test_revoked_key_is_401(ingest, event):
    assert post_json(ingest, EVENTS, event("before")).status_code == 201
    api_key_revoke(key=ApiKey.objects.get(name="test ingest"))

    response = post_json(ingest, EVENTS, event("after"))

    assert response.status_code == 401
    assert not UsageEvent.objects.filter(event_id="after").exists()


def test_key_without_ingest_scope_is_403(make_client, event):
    reader = make_client("read")

    response = post_json(reader, EVENTS, event())

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_key_restricted_to_another_customer_is_403_and_writes_nothing(make_client, event, globex):
    globex_key = make_client("ingest", customer=globex)

    response = post_json(globex_key, EVENTS, event(customer="acme-co"))
    unknown = post_json(globex_key, EVENTS, event("e2", customer="does-not-exist"))

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "customer_forbidden"
    # the same answer for a customer that does not exist: nothing about other tenants leaks
    assert unknown.status_code == 403
    assert unknown.json()["error"] == response.json()["error"]
    assert UsageEvent.objects.count() == 0


def test_over_the_rate_limit_is_429_with_retry_after(ingest, event, settings):
    settings.TOLLGATE_RATE_LIMIT_PER_SECOND = 3

    statuses = [post_json(ingest, EVENTS, event(f"e{i}")).status_code for i in range(8)]
    limited = post_json(ingest, EVENTS, event("last"))

    assert 429 in statuses
    if limited.status_code == 429:
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
    assert statuses.count(201) <= 2 * 3  # at most two one-second windows' worth got through


def test_count_meter_defaults_quantity_to_one(ingest, event):
    response = post_json(ingest, EVENTS, event(meter="api_calls", quantity=None))

    assert response.status_code == 201
    assert UsageEvent.objects.get().quantity == Decimal(1)


def test_full_event_contract_is_stored(ingest, event):
    body = event(project="chatbot", trace={"run_id": "run-7", "parent_id": "p", "step": 3, "agent": "planner"},
                 billable=False, reason="internal_test", schema_version=1)

    assert post_json(ingest, EVENTS, body).status_code == 201

    stored = UsageEvent.objects.select_related("project").get()
    assert stored.project is not None and stored.project.key == "chatbot"
    assert stored.trace == {"run_id": "run-7", "parent_id": "p", "step": 3, "agent": "planner"}
    assert stored.run_id == "run-7"
    assert stored.billable is False and stored.reason == "internal_test"
    assert stored.dimensions == {"model": "gpt-4o", "direction": "input"}


def test_huge_and_tiny_quantities_stay_exact(ingest, event):
    post_json(ingest, EVENTS, event("big", quantity="1000000000000"))
    post_json(ingest, EVENTS, event("odd", quantity="12345678901234567890.123456789012345678"))

    assert UsageEvent.objects.get(event_id="big").quantity == Decimal("1000000000000")
    assert UsageEvent.objects.get(event_id="odd").quantity == Decimal("12345678901234567890.123456789012345678")


def test_correction_is_signed_and_counts_in_the_original_hour(ingest, event, now):
    original_at = now - timedelta(hours=3)
    post_json(ingest, EVENTS, event("orig", quantity="100", timestamp=original_at.isoformat()))

    response = post_json(ingest, EVENTS, event("fix", quantity="-40", corrects="orig"))

    assert response.status_code == 201
    fix = UsageEvent.objects.get(event_id="fix")
    assert fix.quantity == Decimal("-40")
    assert fix.usage_at == original_at


def test_correction_must_match_the_original_meter(ingest, event):
    post_json(ingest, EVENTS, event("orig", quantity="100"))

    response = post_json(ingest, EVENTS, event("fix", meter="api_calls", quantity="-1", corrects="orig"))

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unknown_original"


# --- batch ------------------------------------------------------------------------------------------

def test_batch_reports_each_event_in_request_order(ingest, event):
    post_json(ingest, EVENTS, event("seen"))
    post_json(ingest, EVENTS, event("taken", quantity="1"))
    events = [
        event("new-1"),
        event("seen"),                   # duplicate of an earlier request
        {"event_id": "bad", "customer": "acme-co"},  # invalid: does not sink the others
        event("taken", quantity="2"),    # conflict
        event("new-2"),
        event("new-2"),                  # duplicate inside the same batch
        event("new-3", quantity="3"),
        event("new-3", quantity="4"),    # conflict inside the same batch: the first one wins
    ]

    response = post_json(ingest, BATCH, {"events": events})

    assert response.status_code == 200
    body = response.json()
    assert [r["event_id"] for r in body["results"]] == [e["event_id"] for e in events]
    assert [r["status"] for r in body["results"]] == [
        "accepted", "duplicate", "rejected", "rejected", "accepted", "duplicate", "accepted", "rejected"]
    assert body["results"][2]["error"]["code"] == "validation_error"
    assert body["results"][3]["error"]["code"] == "idempotency_conflict"
    assert body["results"][7]["error"]["code"] == "idempotency_conflict"
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (3, 2, 3)
    assert UsageEvent.objects.get(event_id="new-3").quantity == Decimal(3)
    assert UsageEvent.objects.count() == 5


def test_batch_correction_may_follow_its_original_in_the_same_batch(ingest, event):
    response = post_json(ingest, BATCH, {"events": [event("o", quantity="10"), event("c", quantity="-1", corrects="o")]})

    assert [r["status"] for r in response.json()["results"]] == ["accepted", "accepted"]


@pytest.mark.parametrize("count", [0, 1001])
def test_batch_size_outside_1_to_1000_is_422(ingest, event, count):
    response = post_json(ingest, BATCH, {"events": [event(f"e{i}") for i in range(count)]})

    assert response.status_code == 422
    assert "events" in response.json()["error"]["fields"]
    assert UsageEvent.objects.count() == 0


def test_batch_of_exactly_1000_is_accepted(ingest, event):
    response = post_json(ingest, BATCH, {"events": [event(f"e{i}") for i in range(1000)]})

    assert response.status_code == 200
    assert response.json()["accepted"] == 1000
    assert UsageEvent.objects.count() == 1000


@pytest.mark.parametrize("body", [b"[]", b'{"events": {}}', b'{"items": []}', b"{oops"])
def test_batch_with_the_wrong_shape_is_400(ingest, body):
    assert post_json(ingest, BATCH, body).status_code == 400


def test_batch_with_a_restricted_key_rejects_only_foreign_events(make_client, event, globex):
    key = make_client("ingest", customer=globex)

    response = post_json(key, BATCH, {"events": [event("mine", customer="globex"), event("theirs")]})

    assert [r["status"] for r in response.json()["results"]] == ["accepted", "rejected"]
    assert response.json()["results"][1]["error"]["code"] == "customer_forbidden"
    assert len(stored_rows()) == 1


# --- append-only ------------------------------------------------------------------------------------

def test_the_customer_project_and_meter_of_stored_events_cannot_be_deleted(ingest, event, acme, tokens_meter):
    # given a stored event of acme's project (the event table keeps no foreign-key constraints in the
    # database: the ORM's PROTECT guards what they guarded)
    from django.db.models import ProtectedError

    from billing.customers.models import Project

    project = Project.objects.create(customer=acme, key="chat", name="Chat")
    assert post_json(ingest, EVENTS, event(project="chat")).status_code == 201

    # when the customer, the project or the meter is deleted, then it is refused and the event keeps them
    for row in (project, acme, tokens_meter):
        with pytest.raises(ProtectedError) as refused:
            row.delete()
        assert any(isinstance(o, UsageEvent) for o in refused.value.protected_objects), row
    stored = UsageEvent.objects.select_related("customer", "project", "meter").get()
    assert stored.project is not None and stored.project.key == "chat"
    assert (stored.customer.external_id, stored.meter.key) == ("acme-co", tokens_meter.key)


def test_stored_events_cannot_be_edited_or_deleted_through_the_orm(ingest, event):
    post_json(ingest, EVENTS, event())
    stored = UsageEvent.objects.get()

    from billing.usage.models import AppendOnlyError

    stored.quantity = Decimal(1)
    with pytest.raises(AppendOnlyError):
        stored.save()
    with pytest.raises(AppendOnlyError):
        stored.delete()
    with pytest.raises(AppendOnlyError):
        UsageEvent.objects.filter(pk=stored.pk).update(quantity=Decimal(2))
    with pytest.raises(AppendOnlyError):
        UsageEvent.objects.all().delete()
    assert UsageEvent.objects.get().quantity == Decimal(1200)
