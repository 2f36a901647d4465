"""The OpenAPI schema tells the truth, and no request it allows (or nearly allows) answers 500: schemathesis
generates requests for every operation of the served schema (valid and invalid ones: its examples, coverage
and fuzzing phases) and sends them in-process to the Django app (WSGI), once with an admin key and once
with an admin key restricted to one customer. Each answer must not be a server error and must be
documented: its status, its content type and its body.

Examples per operation (fuzzing phase): ``TOLLGATE_SCHEMATHESIS_EXAMPLES``, else 100 in CI (``CI=true``) and
10 locally. Hypothesis is derandomized: the same code gets the same requests, so CI is never flaky; a change
to the schema or the code changes the requests."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from billing.catalog.openapi import PLAN_EXAMPLE_VALUE
from billing.guardrails.openapi import BUDGET_EXAMPLE_VALUE
from tests.conftest import post_json

APP = get_wsgi_application()
schema = schemathesis.openapi.from_wsgi("/api/v1/schema?format=json", APP)
EXAMPLES = int(os.environ.get("TOLLGATE_SCHEMATHESIS_EXAMPLES") or (100 if os.environ.get("CI") == "true" else 10))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def keys(acme: Any, globex: Any, make_client: Any, tokens_meter: Any, calls_meter: Any, now: Any) -> Iterator[dict[str, str]]:
    """The keys, and what the schema's examples name (a plan ``pro``, customer ``acme-co`` on it, a project,
    a run, a budget, a reservation), so that the examples reach past the lookups."""
    admin = make_client("admin")
    assert post_json(admin, "/api/v1/plans", PLAN_EXAMPLE_VALUE).status_code == 201
    assert post_json(admin, "/api/v1/customers/acme-co/subscription", {"plan": "pro"}).status_code == 201
    assert post_json(admin, "/api/v1/customers/acme-co/projects", {"id": "chatbot"}).status_code == 201
    assert post_json(admin, "/api/v1/customers/acme-co/budgets", BUDGET_EXAMPLE_VALUE).status_code == 201
    assert post_json(admin, "/api/v1/events", {
        "event_id": "seed-1", "customer": "acme-co", "meter": "api_calls", "timestamp": now.isoformat(),
        "trace": {"run_id": "run-7", "step": 1}}).status_code == 201
    assert post_json(admin, "/api/v1/reservations", {
        "reservation_id": "res-1", "customer": "acme-co", "meter": "llm_tokens", "quantity": "4000",
        "ttl_seconds": 600}).status_code == 201
    # the requests go through Django's WSGI handler, not its test client: keep the test's connection (and
    # its transaction) open across them, as the test client does
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    quiet = logging.getLogger("django.request")
    level, quiet.level = quiet.level, logging.ERROR
    yield {"admin": admin.raw_key, "restricted": make_client("admin", customer=acme).raw_key}
    quiet.level = level
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["admin", "restricted"])
@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented_and_never_500(case: Any, keys: dict[str, str], who: str) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {keys[who]}"}, checks=CHECKS)


def test_the_schema_documents_every_api_route():
    operations = list(schema.get_all_operations())

    assert len(operations) == 55
    assert all(isinstance(result, Ok) for result in operations)


@pytest.mark.django_db
def test_every_request_example_of_the_schema_is_one_the_api_accepts(keys: dict[str, str]) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {keys['admin']}")
    served = client.get("/api/v1/schema?format=json").json()
    sent = []
    for path, operations in served["paths"].items():
        for method, operation in operations.items():
            examples = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("examples", {})
            url = path
            for parameter in operation.get("parameters", []) if examples else []:
                if parameter["in"] == "path":
                    url = url.replace("{" + parameter["name"] + "}", parameter["example"])
            for name, example in examples.items():
                response = client.generic(method.upper(), url, json.dumps(example["value"]), content_type="application/json")
                assert response.status_code < 300, (method, path, name, response.content)
                sent.append(name)

    assert {"Event", "Batch", "Settle", "Plan", "Version", "Budget"} <= set(sent)
