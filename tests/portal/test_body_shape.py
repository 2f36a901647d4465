"""The contract's 400: a body that is not JSON, or not a JSON object at all, is 400 on every write, whether
DRF parses it or the view reads the raw body (events, plans); 422 is for a well-formed object that is
invalid."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.django_db

WRITES = [
    ("POST", "/api/v1/events"), ("POST", "/api/v1/events/batch"), ("POST", "/api/v1/meters"),
    ("POST", "/api/v1/reservations"), ("POST", "/api/v1/plans"), ("POST", "/api/v1/plans/pro/versions"),
    ("POST", "/api/v1/customers"), ("PATCH", "/api/v1/customers/acme-co"),
    ("POST", "/api/v1/customers/acme-co/projects"), ("PUT", "/api/v1/customers/acme-co/overrides"),
    ("POST", "/api/v1/customers/acme-co/pauses"), ("POST", "/api/v1/customers/acme-co/budgets"),
    ("POST", "/api/v1/customers/acme-co/credits"), ("POST", "/api/v1/customers/acme-co/alert-thresholds"),
    ("POST", "/api/v1/webhook-endpoints"),
]


@pytest.fixture
def pro_plan(admin: Any) -> None:
    created = admin.post("/api/v1/plans", {"key": "pro", "name": "Pro", "currency": "USD",
                                           "effective_from": "2026-01-01T00:00:00Z"}, format="json")
    assert created.status_code == 201, created.content


@pytest.mark.parametrize(("method", "path"), WRITES)
@pytest.mark.parametrize("body", ["[]", "[{}]", "3", '"text"', "null", "true"])
def test_a_body_that_is_not_an_object_is_400(admin, acme, pro_plan, method, path, body):
    answer = admin.generic(method, path, body, content_type="application/json")
    assert answer.status_code == 400, answer.content
    assert answer.json()["error"]["code"] in {"invalid_shape", "invalid_json", "invalid_request"}


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_a_body_that_is_not_json_is_400(admin, acme, pro_plan, method, path):
    answer = admin.generic(method, path, '{"key": ', content_type="application/json")
    assert answer.status_code == 400, answer.content
    assert answer.json()["error"]["code"] in {"invalid_json", "invalid_shape", "invalid_request"}


def test_a_customer_id_problem_is_named_id(admin):
    answer = admin.post("/api/v1/customers", {"id": "not an id!"}, format="json")
    assert answer.status_code == 422
    assert list(answer.json()["error"]["fields"]) == ["id"]
