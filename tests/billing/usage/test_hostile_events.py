"""One bad event never fails its batch: hostile strings, dates and nesting are refused per event, before
the database sees them, and the good events of the batch are stored. Runs on SQLite and on PostgreSQL
(DATABASE_URL), where a NUL reaching an INSERT is what used to answer 500."""

from __future__ import annotations

import json

import pytest

from billing.usage.models import UsageEvent
from tests.conftest import post_json

pytestmark = pytest.mark.django_db
EVENTS = "/api/v1/events"
BATCH = "/api/v1/events/batch"
DEEP = "[" * 1000 + "]" * 1000


@pytest.fixture(autouse=True)
def _catalog(acme, tokens_meter):
    acme.projects.create(key="chatbot", name="Chatbot")


def _raw_batch(items: list[str]) -> bytes:
    return ('{"events": [' + ",".join(items) + "]}").encode()


def _good(event, event_id: str) -> str:
    return json.dumps(event(event_id))


HOSTILE_FIELDS = [
    ("event_id", {"event_id": "bad\u0000id"}),
    ("customer", {"customer": "acme\u0000co"}),
    ("meter", {"meter": "llm\u0000tokens"}),
    ("project", {"project": "chat\u0000bot"}),
    ("reason", {"reason": "r\u0000"}),
    ("corrects", {"corrects": "x\u0000"}),
    ("dimensions.model", {"dimensions": {"model": "gpt\u00004o"}}),
    ("dimensions", {"dimensions": {"mo\u0000del": "gpt-4o"}}),
    ("trace.run_id", {"trace": {"run_id": "run\u00007"}}),
    ("trace.agent", {"trace": {"agent": "\u0000"}}),
    ("trace.step", {"trace": {"step": "s\u0000"}}),
]


@pytest.mark.parametrize(("field", "overrides"), HOSTILE_FIELDS, ids=[f for f, _ in HOSTILE_FIELDS])
def test_a_nul_in_any_string_field_rejects_only_that_event(ingest, event, field, overrides):
    bad = {**event("bad-1"), **overrides}

    response = post_json(ingest, BATCH, {"events": [event("good-1"), bad, event("good-2")]})

    assert response.status_code == 200
    body = response.json()
    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "accepted"]
    error = body["results"][1]["error"]
    assert error["code"] == "validation_error"
    assert error["fields"] == {field: ["Must not contain a NUL character."]}
    assert sorted(UsageEvent.objects.values_list("event_id", flat=True)) == ["good-1", "good-2"]


def test_a_nul_in_a_single_event_is_422(ingest, event):
    response = post_json(ingest, EVENTS, event(dimensions={"model": "a\u0000"}))

    assert response.status_code == 422
    assert response.json()["error"]["fields"] == {"dimensions.model": ["Must not contain a NUL character."]}
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                       "1999-12-31T23:59:59Z", "2000-01-01T00:30:00+01:00"])
def test_a_timestamp_outside_the_sane_range_rejects_only_that_event(ingest, event, timestamp):
    response = post_json(ingest, BATCH, {"events": [event("good-1"), event("bad-1", timestamp=timestamp)]})

    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0]["status"] == "accepted"
    assert results[1]["status"] == "rejected"
    assert results[1]["error"]["code"] == "validation_error"
    assert list(results[1]["error"]["fields"]) == ["timestamp"]
    assert list(UsageEvent.objects.values_list("event_id", flat=True)) == ["good-1"]


@pytest.mark.parametrize(("quantity", "problem"), [
    ("1e999999999", "Quantity has more than 20 digits before the decimal point."),
    ("1e-999999999", "Quantity has more than 18 decimal places."),
    ("1E+20", "Quantity has more than 20 digits before the decimal point."),
])
def test_a_quantity_beyond_any_decimal_context_rejects_only_that_event(ingest, event, quantity, problem):
    response = post_json(ingest, BATCH, {"events": [event("good-1"), event("bad-1", quantity=quantity)]})

    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0]["status"] == "accepted"
    assert results[1]["error"]["fields"] == {"quantity": [problem]}


@pytest.mark.parametrize("quantity", ["0E+999999999", "0E-999999999", "99999999999999999999.999999999999999999",
                                      "1200.000000000000000000000", "1." + "0" * 5000, "1" + "0" * 19])
def test_quantities_at_the_edges_that_fit_are_accepted(ingest, event, quantity):
    response = post_json(ingest, EVENTS, event(quantity=quantity))

    assert response.status_code == 201, response.content


def test_the_first_instant_of_2000_is_in_range(ingest, event):
    response = post_json(ingest, EVENTS, event(timestamp="2000-01-01T01:00:00+01:00"))

    assert response.status_code == 201


def test_an_edge_timestamp_on_a_single_event_is_422(ingest, event):
    response = post_json(ingest, EVENTS, event(timestamp="0001-01-01T00:00:00+01:00"))

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("bad_item", [
    '{"event_id": "bad-1", "dimensions": {"model": "\\ud800"}}',  # a lone surrogate: malformed JSON
    '{"event_id": "bad-1", "dimensions": {"model": "\\udc00x"}}',
    '{"event_id": "bad-1", "extra": ' + DEEP + "}",  # nested 1,000 levels
    DEEP,
    '{"event_id": "bad-1", "dimensions": ' + '{"a": ' * 1000 + '"x"' + "}" * 1000 + "}",
    '{"event_id": "bad-1", "quantity": 1,,}',
    "\x00",
])
def test_a_malformed_or_too_deep_item_rejects_only_that_item(ingest, event, bad_item):
    body = _raw_batch([_good(event, "good-1"), bad_item, _good(event, "good-2")])

    response = ingest.post(BATCH, data=body, content_type="application/json")

    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "accepted"]
    assert results[1]["error"]["code"] in ("invalid_json", "invalid_shape", "validation_error")
    assert sorted(UsageEvent.objects.values_list("event_id", flat=True)) == ["good-1", "good-2"]


def test_invalid_utf8_inside_a_string_rejects_only_that_item(ingest, event):
    bad = b'{"event_id": "bad-1", "customer": "acme-co", "meter": "llm_tokens", "dimensions": {"m": "\xff\xfe"}}'
    body = b'{"events": [' + _good(event, "good-1").encode() + b"," + bad + b"]}"

    response = ingest.post(BATCH, data=body, content_type="application/json")

    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0]["status"] == "accepted"
    assert results[1] == {"event_id": None, "status": "rejected", "error": {
        "code": "invalid_json", "message": "The body is not valid JSON: a string is not valid UTF-8."}}
    assert list(UsageEvent.objects.values_list("event_id", flat=True)) == ["good-1"]


def test_a_malformed_item_keeps_its_place_and_the_batch_its_order(ingest, event):
    items = [_good(event, f"e-{i}") for i in range(5)]
    items[2] = '{"event_id": "bad", "x": "\\ud800"}'

    response = ingest.post(BATCH, data=_raw_batch(items), content_type="application/json")

    assert [r["event_id"] for r in response.json()["results"]] == ["e-0", "e-1", None, "e-3", "e-4"]


@pytest.mark.parametrize(("path", "body"), [
    (BATCH, b"\x00"), (BATCH, b"{"), (BATCH, b'{"events": [1, 2'), (BATCH, b'{"events": []} trailing'),
    (BATCH, b'{"events": ' + DEEP.encode() + b", }"), (BATCH, b"\xff\xfe"), (BATCH, b'{"\xff": 1, "events": []}'),
    (BATCH, DEEP.encode()), (BATCH, b'{"events": {"a": ' + DEEP.encode() + b"}}"),
    (EVENTS, b"\x00"), (EVENTS, b"{"), (EVENTS, b"\xff\xfe"), (EVENTS, b'\x00{"event_id": "x"}'),
    (EVENTS, DEEP.encode()), (EVENTS, b'{"event_id": "\xff"}'), (EVENTS, b'{"event_id": "\\ud800"}'),
])
def test_a_body_that_is_not_json_is_a_clean_400(ingest, path, body):
    response = ingest.post(path, data=body, content_type="application/json")

    assert response.status_code == 400, (path, body, response.content)
    assert response.json()["error"]["code"] in ("invalid_json", "invalid_shape")
    assert not UsageEvent.objects.exists()


def test_an_unknown_top_level_key_beside_a_malformed_item_is_still_invalid_shape(ingest, event):
    body = b'{"events": [{"x": "\\ud800"}], "extra": 1}'

    response = ingest.post(BATCH, data=body, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_shape"


def test_settle_takes_a_malformed_item_per_event_too(ingest, make_client):
    response = ingest.post("/api/v1/reservations/r-1/settle", data=b'{"events": [{"x": "\\ud800"}], "customer": "acme-co"}',
                           content_type="application/json")

    assert response.status_code == 404  # the envelope was read: the reservation is what is missing
    assert response.json()["error"]["code"] == "not_found"


def test_dimensions_and_trace_with_any_unicode_are_stored_exactly(ingest, event):
    # given text that JSON writers treat differently: non-ASCII, line separators, quotes, backslashes
    odd = 'Zürich "q" \\ \u2028 \u2029 \U0001f600 \t end'
    body = event("odd", dimensions={"model": "gpt-4o", "région": odd}) | {"trace": {"run_id": odd, "step": 2}}

    response = post_json(ingest, EVENTS, body)

    # then the columns hold exactly what was sent
    stored = UsageEvent.objects.get(event_id="odd")
    assert response.status_code == 201
    assert stored.dimensions == {"model": "gpt-4o", "région": odd}
    assert stored.trace == {"run_id": odd, "step": 2}
