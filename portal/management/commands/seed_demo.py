"""A demo operator, customer, catalog and events. Safe to run again: it never duplicates anything
and prints a fresh ingest API key each time (keys are shown once)."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone

from billing.audit.context import acting_as
from billing.catalog.models import Plan, Subscription
from billing.catalog.services import catalog_import, meter_create, subscription_set
from billing.common.auth import Principal
from billing.customers.models import Customer, CustomerUser, Project
from billing.customers.services import api_key_create, customer_user_create
from billing.guardrails.budgets import budget_create
from billing.guardrails.models import Budget, CustomerOverride
from billing.guardrails.overrides import override_put
from billing.usage.services import events_ingest

OPERATOR = ("operator", "tollgate-operator")
CUSTOMER_USER = ("acme", "tollgate-acme")
METERS = [
    {"key": "llm_tokens", "name": "LLM tokens", "unit": "token", "aggregation": "sum"},
    {"key": "api_calls", "name": "API calls", "unit": "call", "aggregation": "count"},
    {"key": "gpu_seconds", "name": "GPU seconds", "unit": "second", "aggregation": "sum"},
    {"key": "active_agents", "name": "Active agents", "unit": "agent", "aggregation": "unique_count", "unique_by": "agent_id"},
]

DEMO_PLANS = """
plans:
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2026-01-01T00:00:00Z"
    base_fee: "99.00"
    charges:
      - meter: llm_tokens
        filter: {model: gpt-4o}
        model: graduated
        tiers:
          - {up_to: 1000000, unit_price: "0.000005"}
          - {up_to: null, unit_price: "0.0000025"}
      - {meter: llm_tokens, filter: {model: gpt-4o-mini}, model: per_unit, unit_price: "0.0000006"}
      - {meter: llm_tokens, filter: {model: claude-sonnet}, model: volume,
         tiers: [{up_to: 500000, unit_price: "0.000003"}, {up_to: null, unit_price: "0.000002"}]}
      - {meter: api_calls, model: package, package_size: 1000, package_price: "1.00"}
      - {meter: gpu_seconds, model: flat_overage, flat_price: "49.00", included: 50000, overage_unit_price: "0.001"}
    limits:
      - {meter: llm_tokens, soft: "80%", hard: 50000000}
    spend_cap: "5000.00"
"""


class Command(BaseCommand):
    help = "Seed a demo operator login, customer (with a dashboard login), catalog and events."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--events", type=int, default=500, help="demo events to ingest (idempotent ids)")
        parser.add_argument("--json", action="store_true", help="print logins and key as JSON")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        with acting_as("system:seed_demo"):  # every write below is the seed's in the audit log
            self._seed(options)

    def _seed(self, options: dict[str, Any]) -> None:
        user_model = get_user_model()
        if not user_model.objects.filter(username=OPERATOR[0]).exists():
            user_model.objects.create_superuser(OPERATOR[0], "operator@tollgate.localhost", OPERATOR[1])
        for meter in METERS:
            meter_create(**meter)
        catalog_import(text=DEMO_PLANS, actor="seed_demo")
        customer, _ = Customer.objects.get_or_create(
            external_id="acme-co", defaults={"name": "Acme Co", "email": "billing@acme.example"}
        )
        for key in ("chatbot", "research-agent"):
            Project.objects.get_or_create(customer=customer, key=key, defaults={"name": key.replace("-", " ").title()})
        if not CustomerUser.objects.filter(user__username=CUSTOMER_USER[0]).exists():
            customer_user_create(customer=customer, username=CUSTOMER_USER[0], password=CUSTOMER_USER[1],
                                 email="dev@acme.example")
        if not Subscription.objects.filter(customer=customer).exists():
            now = timezone.now()
            subscription_set(customer=customer, plan=Plan.objects.get(key="pro"), start=now - timedelta(days=60), now=now,
                             actor="seed_demo")
        if not CustomerOverride.objects.filter(customer=customer).exists():  # agent runs under circuit breakers
            override_put(customer=customer, data={"run_limits": {"max_steps": 50, "max_spend": "5.00"}},
                         actor="seed_demo")
        if not Budget.objects.filter(customer=customer).exists():
            budget_create(customer=customer, budget_id="research-agent", scope={"project": "research-agent"},
                          amount="200.00", period="month", action="block", soft="80%", actor="seed_demo")
        self._events(customer, options["events"])
        _, ingest_key = api_key_create(name="demo ingest key", scope="ingest")
        _, read_key = api_key_create(name="demo read key (acme-co)", scope="read", customer=customer)
        info = {
            "operator_login": {"username": OPERATOR[0], "password": OPERATOR[1], "url": "/admin/"},
            "customer_login": {"username": CUSTOMER_USER[0], "password": CUSTOMER_USER[1], "customer": "acme-co"},
            "ingest_api_key": ingest_key,
            "read_api_key": read_key,
        }
        if options["json"]:
            self.stdout.write(json.dumps(info))
            return
        self.stdout.write(self.style.SUCCESS("Demo ready."))
        self.stdout.write(f"  operator (staff) login : {OPERATOR[0]} / {OPERATOR[1]}")
        self.stdout.write(f"  customer login (acme-co): {CUSTOMER_USER[0]} / {CUSTOMER_USER[1]}")
        self.stdout.write(f"  ingest API key         : {ingest_key}")
        self.stdout.write(f"  read API key (acme-co) : {read_key}")

    def _events(self, customer: Customer, count: int) -> None:
        rng = random.Random(42)  # noqa: S311 - demo data, deterministic ids and values
        now = timezone.now()
        raw = []
        for i in range(count):
            at = now - timedelta(hours=rng.randint(0, 24 * 7), minutes=rng.randint(0, 59))
            model = rng.choice(["gpt-4o", "gpt-4o-mini", "claude-sonnet"])
            raw.append(json.dumps({
                "event_id": f"demo-{i}",
                "customer": customer.external_id,
                "project": rng.choice(["chatbot", "research-agent"]),
                "meter": "llm_tokens",
                "quantity": rng.randint(200, 8000),
                "timestamp": at.isoformat(),
                "dimensions": {"model": model, "direction": rng.choice(["input", "output"])},
                "trace": {"run_id": f"run-{i // 10}", "step": i % 10, "agent": "demo-agent"},
            }).encode())
        admin = Principal(scopes=frozenset({"admin"}))
        for start in range(0, len(raw), 1000):
            events_ingest(principal=admin, raw_events=raw[start:start + 1000], now=now)
