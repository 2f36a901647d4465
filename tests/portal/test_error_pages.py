"""Django's own 400, 403, 404 and 500 (and a CSRF failure) answer the contract's JSON error body under /api/
(and the gateway's and webhooks' paths), and the error page elsewhere."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.portal.error_urls")]

CASES = [("deny", 403, "forbidden"), ("suspicious", 400, "invalid_request"), ("boom", 500, "internal_error")]


@pytest.fixture
def client() -> Client:
    return Client(raise_request_exception=False)


@pytest.mark.parametrize(("view", "status", "code"), CASES)
def test_under_the_api_an_error_is_the_contracts_json_body(client, view, status, code):
    response = client.get(f"/api/v1/test/{view}")

    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == code
    assert set(response.json()["error"]) == {"code", "message"}


@pytest.mark.parametrize(("view", "status", "code"), CASES)
def test_elsewhere_an_error_is_the_error_page(client, view, status, code):
    response = client.get(f"/test/{view}")

    assert response.status_code == status
    assert response["Content-Type"].startswith("text/html")
    text = response.content.decode()
    assert text.startswith("<!doctype html>") and f"<code>{code}</code> ({status})" in text
    assert "a bug" not in text  # nothing of the exception leaks


@pytest.mark.parametrize("path", ["/api/v1/no-such-thing", "/api/v2/events", "/gateway/v1/models", "/webhooks/nope"])
def test_an_unknown_path_of_a_program_is_json_404(client, path):
    response = client.get(path)

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "No such path."}}


@pytest.mark.parametrize("path", ["/no-such-page", "/console-x/", "/static-ish"])
def test_an_unknown_page_is_the_html_404_page(client, path):
    response = client.get(path)

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert "<code>not_found</code> (404)" in response.content.decode()


def test_a_form_posted_without_its_csrf_token_is_the_403_page():
    client = Client(enforce_csrf_checks=True)

    response = client.post("/accounts/login/", {"username": "x", "password": "y"})

    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")
    assert "security check failed" in response.content.decode()


def test_a_csrf_failure_under_the_api_is_json():
    response = Client(enforce_csrf_checks=True).post("/api/v1/test/form", {"a": "b"})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_the_500_page_does_not_touch_the_session(client, django_assert_num_queries):
    client.cookies["sessionid"] = "some-session-key"
    with django_assert_num_queries(0):
        response = client.get("/test/boom")

    assert response.status_code == 500
    assert "internal_error" in response.content.decode()


@pytest.mark.urls("portal.urls_asgi")
def test_the_asgi_url_conf_answers_the_same_errors(client):
    assert client.get("/api/v1/no-such-thing").json()["error"]["code"] == "not_found"
    assert "<code>not_found</code> (404)" in client.get("/no-such-page").content.decode()
