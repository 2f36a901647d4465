"""The tenant sweep: every URL pattern of the URL conf, with its path parameters filled with tenant A's real
object ids, with every method, sent by tenant B: with each of B's customer-restricted API keys (admin, read,
ingest) and with a session of B's dashboard user. Bodies name A too, and are otherwise valid where a guess
can make them so. Not one answer may succeed against A (a 2xx that shows any of A's data, or any change of
the database), and none may be a 5xx."""

from __future__ import annotations

import itertools
import json
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from django.apps import apps
from django.contrib.sessions.models import Session
from django.utils import timezone as django_timezone
from rest_framework.test import APIClient

from billing.catalog.models import Plan
from billing.catalog.services import catalog_import, subscription_set
from billing.customers.models import ApiKey, CustomerUser
from billing.customers.services import api_key_create, customer_create, customer_user_create, project_create
from billing.guardrails.models import AlertThreshold, Anomaly, Run
from billing.invoicing.services import invoice_draft_refresh
from billing.notify.models import WebhookDelivery
from billing.notify.services import endpoint_create, event_emit
from portal.models import Heartbeat
from tests.conftest import post_json
from tests.portal.test_no_500s import ROUTES

pytestmark = pytest.mark.django_db
UTC = timezone.utc
METHODS = ("get", "post", "put", "patch", "delete")
_PARAM = re.compile(r"<(?:(?P<conv>\w+):)?(?P<name>\w+)>")
CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
plans:
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2024-01-01T00:00:00Z"
    base_fee: "10"
    charges:
      - {meter: llm_tokens, model: per_unit, unit_price: "0.01"}
    limits:
      - {meter: llm_tokens, soft: "80%", hard: 100000}
"""
# What only tenant A's data holds: a 2xx answer to B holding any of these has shown B something of A's
MARKERS = ("victim-a", "Alpha Victim", "alpha-secret", "alpha-project", "alpha-run", "alpha-resv", "alpha-budget",
           "alpha-credit", "alpha-pause", "anom_alpha", "alpha.example", "alpha-user")
# Fields that B's own requests change on B's own rows, never A's
VOLATILE = {"last_used_at", "last_login"}


class TenantA:
    """Tenant A with one of everything a URL can name, made through the API and the services."""

    def __init__(self, admin: APIClient) -> None:
        now = datetime.now(UTC)
        catalog_import(text=CATALOG, actor="t")
        endpoint = endpoint_create(url="https://alpha.example/hook", events=["customer.paused", "alert.soft_limit"])
        self.customer = customer_create(external_id="victim-a", name="Alpha Victim Corp",
                                        metadata={"note": "alpha-secret"})
        subscription_set(customer=self.customer, plan=Plan.objects.get(key="pro"), start=now - timedelta(days=40),
                         now=now, actor="t")
        project_create(customer=self.customer, key="alpha-project")
        customer_user_create(customer=self.customer, username="alpha-user", password="pw-alpha-123456")
        url = "/api/v1/customers/victim-a"
        batch = {"events": [{"event_id": f"alpha-evt-{i}", "customer": "victim-a", "meter": "llm_tokens",
                             "quantity": "10", "project": "alpha-project", "timestamp": now.isoformat(),
                             "trace": {"run_id": "alpha-run", "step": i}} for i in range(3)]}
        answers = [
            post_json(admin, "/api/v1/events/batch", batch),
            post_json(admin, "/api/v1/reservations", {"reservation_id": "alpha-resv", "customer": "victim-a",
                                                       "meter": "llm_tokens", "quantity": "5", "ttl_seconds": 3600}),
            post_json(admin, f"{url}/pauses", {"scope": "project", "project": "alpha-project", "reason": "alpha-pause"}),
            post_json(admin, f"{url}/budgets", {"budget_id": "alpha-budget", "amount": "50.00", "soft": "50%"}),
            post_json(admin, f"{url}/credits", {"amount": "7.00", "currency": "USD", "idempotency_key": "alpha-credit",
                                                "reason": "alpha-credit"}),
            post_json(admin, f"{url}/alert-thresholds", {"target": "meter:llm_tokens", "percent": "42"}),
        ]
        assert all(a.status_code in (200, 201) for a in answers), [a.content for a in answers]
        self.pause_id = answers[2].json()["pause_id"]
        Run.objects.create(customer=self.customer, run_id="alpha-run", started_at=now)  # as a run limit records it
        api_key_create(name="alpha gateway", scope="gateway", customer=self.customer)
        self.gateway_prefix = ApiKey.objects.get(customer=self.customer, scope="gateway").prefix
        self.anomaly = Anomaly.objects.create(
            public_id="anom_alpha", idempotency_key="alpha", customer=self.customer, currency="USD", opened_at=now,
            window_start=now - timedelta(minutes=5), window_end=now, window_spend=Decimal("50"),
            baseline_rate=Decimal("0.1"), factor=Decimal("5"), min_spend=Decimal("1"), window_minutes=5, action="alert")
        period_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        invoice = invoice_draft_refresh(customer=self.customer, period_start=period_start)
        assert invoice is not None
        event_emit(type="customer.paused", key="alpha-pause", data={"customer": "victim-a", "reason": "alpha-pause"})
        delivery = WebhookDelivery.objects.get(endpoint=endpoint)  # the operator's, holding A's data
        self.ids = {
            "customer_id": "victim-a", "reservation_id": "alpha-resv", "pause_id": self.pause_id,
            "budget_id": "alpha-budget", "run_id": "alpha-run", "anomaly_id": "anom_alpha",
            "invoice_id": str(invoice.pk), "endpoint_id": endpoint.public_id, "delivery_id": str(delivery.pk),
            "plan_key": "pro", "key": "pro", "prefix": self.gateway_prefix,
            "pk": str(AlertThreshold.objects.get(customer=self.customer).pk), "kind": "customer",
            "user_id": str(CustomerUser.objects.get(customer=self.customer).user_id), "action": "finalize",
            "number": "1",
        }

    def fill(self, route: str) -> str:
        return "/" + _PARAM.sub(lambda m: self.ids[m.group("name")], route)


# Valid-looking fields of every write, all naming A: what a hostile client of B would try
BODY = {"customer": "victim-a", "reason": "sweep", "scope": "customer", "amount": "1.00", "currency": "USD",
        "idempotency_key": "sweep", "budget_id": "sweep", "target": "meter:llm_tokens", "percent": "50",
        "plan": "pro", "resolution": "resume", "note": "sweep", "name": "Sweep", "id": "sweep-project",
        "email": "sweep@example.com", "username": "sweep", "password": "pw-sweep-123456", "spend_cap": "1",
        "reservation_id": "sweep-resv", "meter": "llm_tokens", "quantity": "1", "ttl_seconds": 60,
        "event_id": "sweep-evt", "timestamp": "2026-12-07T00:00:00Z", "url": "https://sweep.example/hook",
        "events": ["customer.paused"], "metadata": {"a": "b"}, "hard": "1", "soft": "1"}


def snapshot() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but the sessions, without the fields B's own use of B's key or login moves."""
    rows = {}
    for model in apps.get_models():
        if model is Session or model is Heartbeat:
            continue
        fields = [f.attname for f in model._meta.concrete_fields if f.attname not in VOLATILE]
        rows[model._meta.label] = list(model._default_manager.order_by("pk").values_list(*fields))
    return rows


def changed(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> list[str]:
    return [label for label in before if before[label] != after[label]]


@pytest.fixture
def tenant_b(make_client: Any) -> dict[str, APIClient]:
    b = customer_create(external_id="tenant-b", name="Tenant B")
    customer_user_create(customer=b, username="bob", password="pw-bob-123456")
    session = APIClient()
    assert session.login(username="bob@" + str(b.pk), password="pw-bob-123456") or \
        session.login(username="bob", password="pw-bob-123456")
    clients = {f"{scope} key of B": make_client(scope, customer=b) for scope in ("admin", "read", "ingest")}
    clients["B's dashboard session"] = session
    for client in clients.values():
        client.raise_request_exception = False
    return clients


def _text(response: Any) -> str:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return str(body.decode(errors="replace"))


def _send(client: APIClient, method: str, path: str) -> Any:
    if method in ("get", "delete"):
        return getattr(client, method)(path)
    if path.startswith(("/api/", "/gateway/", "/webhooks/")):
        return getattr(client, method)(path, data=json.dumps(BODY), content_type="application/json")
    form = {k: json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in BODY.items()}
    return getattr(client, method)(path, data=form) if method == "post" else getattr(client, method)(path)


def test_another_tenant_gets_nothing_of_a_on_any_route_with_any_method(admin, tenant_b):
    Heartbeat.objects.create(name="beat", seen_at=django_timezone.now())  # /readyz ready: any 5xx is a defect
    a = TenantA(admin)
    successes, errors, changes = [], [], []
    tries = 0
    for route in ROUTES:
        if route.startswith("admin/"):
            continue  # Django's admin: staff only, and B is not staff (the sweep asks its login page below)
        path = a.fill(route)
        before = snapshot()
        for (who, client), method in itertools.product(tenant_b.items(), METHODS):
            response = _send(client, method, path)
            tries += 1
            if response.status_code >= 500:
                errors.append((who, method.upper(), path, response.status_code, response.content[:200]))
            elif 200 <= response.status_code < 300:
                shown = [m for m in MARKERS if m in _text(response)]
                if shown:
                    successes.append((who, method.upper(), path, response.status_code, shown))
        after = snapshot()
        if changed(before, after):
            changes.append((path, changed(before, after)))
    assert tries > 1500
    # and the ids are real: the operator's own key sees A's data on those very paths
    answers = {route: admin.get(a.fill(route)) for route in ROUTES if route.startswith("api/v1/") and "<" in route}
    seen = {route for route, answer in answers.items()
            if answer.status_code == 200 and any(m in _text(answer) for m in MARKERS)}
    assert {"api/v1/customers/<str:customer_id>", "api/v1/customers/<str:customer_id>/runs/<str:run_id>",
            "api/v1/invoices/<str:invoice_id>", "api/v1/webhook-endpoints/<str:endpoint_id>"} <= seen, \
        [(r, answers[r].status_code) for r in sorted(set(answers) - seen)]
    assert errors == [], errors
    assert successes == [], successes
    assert changes == [], changes
