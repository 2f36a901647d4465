"""A demo operator, customer, catalog and events. Safe to run again: it never duplicates anything
and prints a fresh ingest API key each time (keys are shown once).

Every date comes from one instant, ``now`` (the clock, or ``--now``): the subscription's start, the
events' spans and last month's close. Last month is closed and its invoice finalized whatever the hour,
also in a month's first hour, while beat would still be waiting out the grace time (the seed's own events
for it are stored before it closes it)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from billing.audit.context import acting_as
from billing.catalog.models import Plan, Subscription
from billing.catalog.services import catalog_import, meter_create, subscription_set
from billing.common.auth import Principal
from billing.common.calendar import period_bounds, previous_period
from billing.common.cli import now_option
from billing.customers.models import Customer, CustomerUser, Project
from billing.customers.services import api_key_create, customer_user_create
from billing.guardrails.budgets import budget_create
from billing.guardrails.models import Budget, CustomerOverride
from billing.guardrails.overrides import override_put
from billing.invoicing import periods
from billing.invoicing import services as invoicing
from billing.invoicing.models import Invoice, PeriodClose
from billing.usage.services import events_ingest
from portal.demo_usage import Span, demo_events

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
        parser.add_argument("--now", help="seed as if it were this instant (RFC 3339), e.g. 2026-12-01T00:30:00Z")

    def handle(self, *args: Any, **options: Any) -> None:
        now = now_option(options["now"], "2026-12-01T00:30:00Z")
        with transaction.atomic(), acting_as("system:seed_demo"):  # every write below is the seed's in the audit log
            self._seed(options, now)

    def _seed(self, options: dict[str, Any], now: datetime) -> None:
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
        if not Subscription.objects.filter(customer=customer).exists():  # since the start of last month
            subscription_set(customer=customer, plan=Plan.objects.get(key="pro"),
                             start=previous_period(period_bounds(now)[0])[0], now=now, actor="seed_demo")
        if not CustomerOverride.objects.filter(customer=customer).exists():  # agent runs under circuit breakers
            override_put(customer=customer, data={"run_limits": {"max_steps": 50, "max_spend": "5.00"}},
                         actor="seed_demo")
        if not Budget.objects.filter(customer=customer).exists():
            budget_create(customer=customer, budget_id="research-agent", scope={"project": "research-agent"},
                          amount="200.00", period="month", action="block", soft="80%", actor="seed_demo")
        self._events(customer, options["events"], now)
        invoice = self._last_month_invoice(customer, now)
        _, ingest_key = api_key_create(name="demo ingest key", scope="ingest")
        _, read_key = api_key_create(name="demo read key (acme-co)", scope="read", customer=customer)
        info = {
            "operator_login": {"username": OPERATOR[0], "password": OPERATOR[1], "url": "/admin/"},
            "customer_login": {"username": CUSTOMER_USER[0], "password": CUSTOMER_USER[1], "customer": "acme-co"},
            "ingest_api_key": ingest_key,
            "read_api_key": read_key,
            "last_month_invoice": f"/invoices/{invoice.pk}/" if invoice is not None else None,
        }
        if options["json"]:
            self.stdout.write(json.dumps(info))
            return
        self.stdout.write(self.style.SUCCESS("Demo ready."))
        self.stdout.write(f"  operator (staff) login : {OPERATOR[0]} / {OPERATOR[1]}")
        self.stdout.write(f"  customer login (acme-co): {CUSTOMER_USER[0]} / {CUSTOMER_USER[1]}")
        self.stdout.write(f"  ingest API key         : {ingest_key}")
        self.stdout.write(f"  read API key (acme-co) : {read_key}")
        if invoice is not None:
            self.stdout.write(f"  last month's invoice   : /invoices/{invoice.pk}/ ({invoice.number}, .pdf for the PDF)")

    def _events(self, customer: Customer, count: int, now: datetime) -> None:
        """Half the events in last month, half in the current one (its last 7 days at most)."""
        this_start = period_bounds(now)[0]
        last_start, last_end = previous_period(this_start)
        spans = [Span(last_start, last_end, f"{last_start:%Y%m}"),
                 Span(max(this_start, now - timedelta(days=7)), now, f"{this_start:%Y%m}")]
        spans = [span for span in spans if span.end - span.start >= timedelta(minutes=15)]  # a month's first minutes
        admin = Principal(scopes=frozenset({"admin"}))
        for number, span in enumerate(spans):
            share = count // len(spans) if number < len(spans) - 1 else count - count // len(spans) * number
            raw = demo_events(customer=customer.external_id, span=span, count=share, seed=42 + number)
            for start in range(0, len(raw), 1000):
                events_ingest(principal=admin, raw_events=raw[start:start + 1000], now=now)

    def _last_month_invoice(self, customer: Customer, now: datetime) -> Invoice | None:
        """Close last month and finalize its invoices, so the demo has a finalized invoice at once. Beat closes
        a period its grace after its end; before that (a month's first hour) the seed closes it at ``now``: its
        own events for it are already stored. Every invoice of a period closed at least the finalize delay ago is
        finalized as beat would; the demo customer's also when the period closed just now (the delay waits for
        requests in flight at the close, and the seed's own events are all stored)."""
        start, end = previous_period(period_bounds(now)[0])
        periods.period_close(start=start, end=end, now=min(end + periods.grace(), now))  # kept if already closed
        invoicing.periods_finalize(now=now)
        invoice = Invoice.objects.filter(customer=customer, period_start=start, kind=Invoice.Kind.INVOICE).first()
        if invoice is None or invoice.is_draft:
            draft = invoicing.invoice_draft_refresh(customer=customer, period_start=start)
            if draft is None:  # no plan last month (a customer subscribed by hand since)
                return invoice
            closed = PeriodClose.objects.get(period_start=start).closed_at
            invoice = invoicing.invoice_finalize(invoice=draft, now=max(now, closed))
        return invoice
