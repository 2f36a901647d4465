"""No request from outside answers 500: every URL pattern of the URL conf, with every method, gets a NUL
in its path parameters and its query, out-of-range dates, and hostile JSON, as an admin key, a key
restricted to another customer, a staff session and no one. Meaningful on PostgreSQL (DATABASE_URL),
which refuses a NUL in any query; on SQLite the answers are checked all the same."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from billing.customers.models import Customer
from portal.models import Heartbeat
from tests.conftest import post_json

pytestmark = pytest.mark.django_db
METHODS = ("get", "post", "put", "patch", "delete", "options")
_PARAM = re.compile(r"<(?:(?P<conv>\w+):)?(?P<name>\w+)>")


def _routes(patterns: list[Any] | None = None, prefix: str = "") -> Iterator[str]:
    """Every route of the URL conf as ``path()`` text; the admin's own site is left to Django."""
    for entry in patterns if patterns is not None else get_resolver().url_patterns:
        route = str(entry.pattern)
        if isinstance(entry, URLResolver):
            if route.startswith("admin/"):
                yield "admin/login/"
                continue
            yield from _routes(entry.url_patterns, prefix + route)
        elif isinstance(entry, URLPattern):
            yield prefix + route


ROUTES = sorted(set(_routes()))


def _fill(route: str, text: str) -> str:
    return "/" + _PARAM.sub(lambda m: "7" if m.group("conv") == "int" else text, route)


@pytest.fixture
def callers(acme: Customer, globex: Customer, make_client: Any, settings: Any) -> dict[str, APIClient]:
    # so that /readyz is ready for the whole sweep, however slow the machine: any 5xx is a defect
    Heartbeat.objects.create(name="beat", seen_at=timezone.now())
    settings.TOLLGATE_HEARTBEAT_SECONDS = 86_400
    staff = User.objects.create_user("ops", password="pw-123456", is_staff=True, is_superuser=True)
    session = APIClient()
    session.force_login(staff)
    clients = {"admin": make_client("admin"), "restricted": make_client("read", customer=globex),
               "anonymous": APIClient(), "staff": session}
    for client in clients.values():
        client.raise_request_exception = False
    return clients


def test_the_sweep_sees_the_whole_url_conf():
    assert len(ROUTES) > 30
    assert "api/v1/customers/<str:customer_id>/usage" in ROUTES
    assert "dashboard/<str:customer_id>/runs/<path:run_id>/" in ROUTES
    assert "console/plans/<str:key>/" in ROUTES


def test_a_nul_in_any_path_parameter_is_400_invalid_request(callers):
    failures = []
    for route in (r for r in ROUTES if re.search(r"<(str|path):", r)):
        for who, client in callers.items():
            for method in METHODS:
                path = _fill(route, "x%00y")
                response = getattr(client, method)(path)
                if response.status_code != 400:
                    failures.append((who, method, path, response.status_code))
                elif path.startswith("/api/"):
                    assert response.json()["error"] == {"code": "invalid_request", "message": response.json()["error"]["message"],
                                                        "fields": {"path": ["Must not contain a NUL character."]}}
    assert failures == []


def test_a_nul_in_any_query_parameter_is_400_invalid_request(callers):
    failures = []
    for route in ROUTES:
        for who, client in callers.items():
            for query in ("meter=%00", "start=2026-01-01T00:00:00Z&customer=a%00", "%00=1"):
                path = f"{_fill(route, 'acme-co')}?{query}"
                response = client.get(path)
                if response.status_code != 400:
                    failures.append((who, path, response.status_code))
    assert failures == []


@pytest.mark.parametrize(("part", "extra"), [
    ("headers", {"HTTP_AUTHORIZATION": "Bearer tg_\x00bcdefabcdef_secret"}),
    ("headers", {"HTTP_AUTHORIZATION": "Bearer tg_abcdefabcdef_se\x00cret"}),
    ("headers", {"HTTP_X_CSRFTOKEN": "a\x00b", "HTTP_USER_AGENT": "x"}),
    ("cookies", {}),
])
def test_a_nul_in_a_header_or_the_session_cookie_is_400_on_every_route(callers, part, extra):
    client = APIClient()
    client.raise_request_exception = False
    failures = []
    for route in ROUTES:
        path = _fill(route, "acme-co")
        if part == "cookies":  # again each time: each answer deletes it
            client.cookies["sessionid"] = "abcdefgh\x00ijklmnop"
        response = client.get(path, **extra)
        if response.status_code != 400:
            failures.append((path, response.status_code))
        elif path.startswith("/api/"):
            assert response.json()["error"]["fields"] == {part: ["Must not contain a NUL character."]}
    assert failures == []


def test_a_hostile_session_cookie_is_dropped_by_the_answer(callers):
    client = APIClient()
    client.cookies["sessionid"] = "abcdefgh\x00ijklmnop"

    response = client.get("/dashboard/")

    assert response.status_code == 400
    assert response.cookies["sessionid"].value == ""  # deleted: the next request is a clean anonymous one


def test_a_nul_in_the_path_of_a_page_is_an_html_400(callers):
    response = callers["staff"].get("/dashboard/x%00/")

    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    assert b"invalid_request" in response.content


@pytest.mark.parametrize("query", [
    "start=0001-01-01T00:00:00%2B01:00", "end=9999-12-31T23:59:59-01:00", "start=1999-12-31T00:00:00Z",
    "period=9999-12", "period=0001-01", "period=1999-12", "start=2026-01-01T00:00:00Z&end=2200-01-01T00:00:00Z",
])
def test_out_of_range_dates_in_a_query_are_never_a_500(callers, query):
    failures = []
    for route in ROUTES:
        for who, client in callers.items():
            path = f"{_fill(route, 'acme-co')}?{query}"
            response = client.get(path)
            if response.status_code >= 500:
                failures.append((who, path, response.status_code))
    assert failures == []


def test_out_of_range_dates_on_the_read_apis_are_422(callers):
    admin = callers["admin"]
    for path in ("/api/v1/customers/acme-co/usage?start=0001-01-01T00:00:00%2B01:00",
                 "/api/v1/customers/acme-co/usage?end=9999-12-31T23:59:59-01:00",
                 "/api/v1/events?start=1999-01-01T00:00:00Z",
                 "/api/v1/customers/acme-co/alerts?period=9999-12"):
        response = admin.get(path)

        assert response.status_code == 422, path
        assert response.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("body", [
    {"metadata": {"note": "a\u0000b"}}, {"metadata": {"a\u0000": "b"}}, {"name": "Ac\u0000me"},
    '{"metadata": ' + "[" * 1000 + "]" * 1000 + "}",
])
def test_hostile_json_in_a_drf_body_is_refused_not_stored(callers, acme, body):
    response = callers["admin"].patch("/api/v1/customers/acme-co", data=body if isinstance(body, str) else
                                      __import__("json").dumps(body), content_type="application/json")

    assert response.status_code in (400, 422), response.content
    assert response.json()["error"]["code"] in ("validation_error", "invalid_json")
    acme.refresh_from_db()
    assert acme.name == "Acme"
    assert acme.metadata in ({}, None)


@pytest.mark.parametrize("body", ['{"metadata": {"note": "\\ud800"}}', '{"metadata": {"\\udc00": "x"}}',
                                  '{"name": "a\\ud800b"}'])
def test_a_lone_surrogate_in_a_drf_body_is_400_invalid_json_as_on_ingest(callers, acme, body):
    response = callers["admin"].patch("/api/v1/customers/acme-co", data=body, content_type="application/json")

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid_json"


def test_a_nul_in_customer_metadata_is_422_naming_the_field(callers):
    response = post_json(callers["admin"], "/api/v1/customers",
                         {"id": "initech", "name": "Initech", "metadata": {"tier": "gold\u0000"}})

    assert response.status_code == 422
    assert response.json()["error"]["fields"] == {"metadata.tier": ["Must not contain a NUL character."]}
    assert not Customer.objects.filter(external_id="initech").exists()


def test_a_nul_in_a_plan_is_422_naming_its_path(callers, tokens_meter):
    plan = {"key": "pro", "name": "Pro\u0000", "currency": "USD", "interval": "month",
            "effective_from": "2026-01-01T00:00:00Z", "base_fee": "10", "charges": []}

    response = post_json(callers["admin"], "/api/v1/plans", plan)

    assert response.status_code == 422
    assert response.json()["error"]["fields"] == {"name": ["Must not contain a NUL character."]}


@pytest.mark.parametrize("start", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1999-12-01T00:00:00Z"])
def test_an_out_of_range_subscription_start_is_422(callers, start):
    plan = {"key": "pro", "name": "Pro", "currency": "USD", "interval": "month",
            "effective_from": "2026-01-01T00:00:00Z", "base_fee": "10", "charges": []}
    assert post_json(callers["admin"], "/api/v1/plans", plan).status_code == 201

    response = post_json(callers["admin"], "/api/v1/customers/acme-co/subscription", {"plan": "pro", "start": start})

    assert response.status_code == 422, response.content
    assert list(response.json()["error"]["fields"]) == ["start"]


def test_anonymous_options_on_the_api_docs_is_not_a_500(callers):
    response = callers["anonymous"].options("/api/docs")

    assert response.status_code == 200
    assert "GET" in response["Allow"]


HOSTILE_BODIES = [
    "{}", "[]", '"x"', "1", "null", '{"a": 1}',
    json.dumps({"id": "x" * 500, "name": 1, "metadata": [1], "email": 5}),
    json.dumps({"plan": "x", "start": "9999-12-31T23:59:59-01:00"}),
    json.dumps({"amount": "1e999999999", "reason": "r", "idempotency_key": "k"}),
    json.dumps({"amount": "NaN", "reason": "r", "idempotency_key": "k"}),
    json.dumps({"amount": 1e308, "reason": "r", "idempotency_key": "k"}),
    json.dumps({"reservation_id": "r1", "customer": "acme-co", "meter": "llm_tokens", "quantity": "1e400",
                "ttl_seconds": 10**30}),
    json.dumps({"reservation_id": "r1", "customer": "acme-co", "meter": "llm_tokens", "quantity": "-1", "ttl_seconds": -5}),
    json.dumps({"target": "spend_cap", "percent": "1e999999999"}),
    json.dumps({"target": "x" * 10000, "percent": 50}),
    json.dumps({"url": "http://" + "a" * 5000, "events": ["alert.soft_limit"]}),
    json.dumps({"url": "http://[::1", "events": ["alert.soft_limit"]}),
    json.dumps({"url": "http://h:99999", "events": ["alert.soft_limit"]}),
    json.dumps({"key": "k", "name": "n", "unit": "u", "aggregation": "unique_count", "unique_by": None}),
    json.dumps({"key": "pro", "name": "Pro", "currency": "USD", "effective_from": "2026-01-01T00:00:00Z",
                "base_fee": "1e999999999", "charges": [{"meter": "llm_tokens", "model": "graduated",
                                                        "tiers": [{"up_to": 10**40, "unit_price": "1e-999999999"}]}]}),
    json.dumps({"effective_from": "2026-01-01T00:00:00Z", "base_fee": "NaN", "charges": "x"}),
    json.dumps({"events": [{"event_id": "e", "customer": "acme-co", "meter": "llm_tokens", "quantity": q,
                            "timestamp": "2026-12-07T00:00:00Z"} for q in ("1e999999999", "1e-999999999", "-0E+9999")]}),
    json.dumps({"event_id": "e", "customer": "acme-co", "meter": "llm_tokens", "quantity": "1e999999999",
                "timestamp": "2026-12-07T00:00:00Z"}),
]


def test_hostile_bodies_on_every_write_route_are_never_a_500(callers, tokens_meter):
    failures = []
    for route, method in itertools.product(ROUTES, ("post", "put", "patch")):
        who = "admin" if route.startswith("api/") else "staff"
        for body in HOSTILE_BODIES:
            response = getattr(callers[who], method)(_fill(route, "acme-co"), data=body, content_type="application/json")
            if response.status_code >= 500:
                failures.append((who, method, route, body[:60], response.status_code))
    assert failures == []


HOSTILE_QUERIES = [
    "limit=99999999999999999999999", "limit=-1", "limit=abc", "cursor=garbage", "cursor=%ff%fe",
    "cursor=aWQ6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk",  # id:99999999999999999999999, beyond a bigint
    "cursor=" + "A" * 5000, "granularity=x", "group_by=a,b,c,d", "group_by=model,model", "group_by=" + "x" * 3000,
    "status=zz", "id=abc", "id=99999999999999999999999", "id=-1", "percent=1e999999999", "percent=NaN",
    "target=spend_cap&percent=1e999999999", "target=spend_cap&percent=0E-999999999", "target=meter:" + "x" * 500 + "&percent=5",
    "customer=" + "x" * 5000, "meter=" + "m" * 5000, "start=2026-01-01T00:00:00Z&end=2026-01-01T00:00:00Z", "print=1",
    "period=2026-13", "period=abcd-ef", "q=%ff", "page=99999999999999999", "o=-xyz",
]


def test_hostile_queries_on_every_route_are_never_a_500(callers, tokens_meter):
    failures = []
    for route, method in itertools.product(ROUTES, ("get", "delete")):
        who = "admin" if route.startswith("api/") else "staff"
        for query in HOSTILE_QUERIES:
            response = getattr(callers[who], method)(f"{_fill(route, 'acme-co')}?{query}")
            if response.status_code >= 500:
                failures.append((method, route, query[:60], response.status_code))
    assert failures == []
