from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("aggregation", ["sum", "count", "max", "latest"])
def test_meter_is_created_and_listed(admin, aggregation):
    response = admin.post("/api/v1/meters", {"key": "m1", "name": "M", "unit": "u", "aggregation": aggregation}, format="json")

    assert response.status_code == 201
    assert admin.get("/api/v1/meters").json()["data"][0]["aggregation"] == aggregation


def test_unique_count_meter_needs_unique_by(admin):
    missing = admin.post("/api/v1/meters", {"key": "agents", "aggregation": "unique_count"}, format="json")
    ok = admin.post("/api/v1/meters", {"key": "agents", "aggregation": "unique_count", "unique_by": "agent_id"}, format="json")

    assert missing.status_code == 422
    assert ok.status_code == 201


def test_same_meter_again_is_200_and_a_different_definition_is_409(admin):
    body = {"key": "tokens", "name": "Tokens", "unit": "token", "aggregation": "sum"}
    admin.post("/api/v1/meters", body, format="json")

    assert admin.post("/api/v1/meters", body, format="json").status_code == 200
    assert admin.post("/api/v1/meters", {**body, "aggregation": "max"}, format="json").status_code == 409


@pytest.mark.parametrize("body", [{"key": "Bad Key", "aggregation": "sum"}, {"key": "k", "aggregation": "median"}, {"key": "k"}])
def test_invalid_meter_is_422(admin, body):
    assert admin.post("/api/v1/meters", body, format="json").status_code == 422
