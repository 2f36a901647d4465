from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_create_get_and_list_customers(admin):
    created = admin.post("/api/v1/customers", {"id": "acme-co", "name": "Acme", "email": "b@acme.example"}, format="json")

    assert created.status_code == 201
    assert created.json()["id"] == "acme-co"
    assert admin.get("/api/v1/customers/acme-co").json()["name"] == "Acme"
    assert [c["id"] for c in admin.get("/api/v1/customers").json()["data"]] == ["acme-co"]


def test_customer_id_is_unique_and_immutable(admin, acme):
    again = admin.post("/api/v1/customers", {"id": "acme-co"}, format="json")
    renamed = admin.patch("/api/v1/customers/acme-co", {"name": "Acme Corp"}, format="json")
    moved = admin.patch("/api/v1/customers/acme-co", {"id": "other"}, format="json")

    assert again.status_code == 409
    assert renamed.status_code == 200 and renamed.json()["name"] == "Acme Corp"
    assert moved.status_code == 422
    assert admin.get("/api/v1/customers/acme-co").json()["id"] == "acme-co"


@pytest.mark.parametrize("body", [{"id": ""}, {"id": "has space"}, {"id": "x" * 129}, {}, {"id": "ok", "email": "nope"}])
def test_invalid_customer_is_422_with_fields(admin, body):
    response = admin.post("/api/v1/customers", body, format="json")

    assert response.status_code == 422
    assert response.json()["error"]["fields"]


def test_projects_are_created_per_customer(admin, acme, globex):
    first = admin.post("/api/v1/customers/acme-co/projects", {"id": "chatbot", "name": "Chat"}, format="json")
    same_key_other_customer = admin.post("/api/v1/customers/globex/projects", {"id": "chatbot"}, format="json")
    again = admin.post("/api/v1/customers/acme-co/projects", {"id": "chatbot"}, format="json")

    assert first.status_code == 201 and first.json() == {"id": "chatbot", "name": "Chat"}
    assert same_key_other_customer.status_code == 201
    assert again.status_code == 409
    assert [p["id"] for p in admin.get("/api/v1/customers/acme-co").json()["projects"]] == ["chatbot"]


def test_unknown_customer_is_404(admin):
    assert admin.get("/api/v1/customers/nobody").status_code == 404
    assert admin.post("/api/v1/customers/nobody/projects", {"id": "p"}, format="json").status_code == 404


def test_error_body_shape_for_non_json(admin):
    response = admin.generic("POST", "/api/v1/customers", b"{nope", content_type="application/json")

    assert response.status_code == 400
    assert set(response.json()["error"]) >= {"code", "message"}


def test_invalid_customer_id_is_reported_under_id(admin):
    response = admin.post("/api/v1/customers", {"id": "has space"}, format="json")

    assert response.status_code == 422
    assert "id" in response.json()["error"]["fields"]


@pytest.mark.parametrize("path", ["/api/v1/customers", "/api/v1/meters", "/api/v1/customers/acme-co/projects"])
def test_a_json_array_where_an_object_is_expected_is_400(admin, acme, path):
    response = admin.post(path, [1, 2], format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_shape"
