"""Fixtures of the Stripe tests: localstripe on loopback, the recording HTTP client, eager Celery,
finalized invoices built directly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from billing.catalog.models import Plan
from billing.customers.models import Customer
from billing.invoicing.models import Invoice, InvoiceLine
from billing.payments import gateway, paystack
from billing.payments.models import BillingMode
from billing.payments.services import plan_billing_mode_set
from tests.billing.payments.paystack_doubles import RecordingPaystack
from tests.billing.payments.stripe_doubles import LocalStripe, RecordingClient

WEBHOOK_SECRET = "whsec_test_tollgate"
INSTALLATION = "inst-a"  # this installation's id, the prefix of every key the tests expect


@pytest.fixture(autouse=True)
def _installation() -> Iterator[str]:
    """One known installation id (the ledger's namespace, see gateway.installation_id)."""
    from ledger.ids import use_namespace

    with use_namespace(INSTALLATION):
        yield INSTALLATION


@pytest.fixture(scope="session")
def localstripe_server() -> Iterator[LocalStripe]:
    server = LocalStripe()
    yield server
    server.close()


@pytest.fixture
def localstripe(localstripe_server: LocalStripe) -> Iterator[LocalStripe]:
    localstripe_server.reset()
    yield localstripe_server
    localstripe_server.start()  # a test that stopped it (an outage) leaves it running for the next one


@pytest.fixture
def stripe_http(monkeypatch: pytest.MonkeyPatch) -> RecordingClient:
    client = RecordingClient()
    monkeypatch.setattr(gateway, "HTTP_CLIENT", client)
    return client


@pytest.fixture
def stripe_on(settings: Any, localstripe: LocalStripe, stripe_http: RecordingClient) -> RecordingClient:
    """Stripe configured against localstripe through the recording client."""
    settings.STRIPE_SECRET_KEY = "sk_test_tollgate"
    settings.STRIPE_API_BASE = localstripe.url
    settings.STRIPE_METER_EVENTS_BASE = localstripe.url
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return stripe_http


@pytest.fixture
def webhook_secret(settings: Any) -> str:
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return WEBHOOK_SECRET


PAYSTACK_SECRET = "sk_test_paystack_tollgate"
PAYSTACK_BASE = "https://paystack.test/api"


@pytest.fixture
def paystack_on(settings: Any, monkeypatch: pytest.MonkeyPatch) -> RecordingPaystack:
    settings.PAYSTACK_SECRET_KEY = PAYSTACK_SECRET
    settings.PAYSTACK_API_BASE = PAYSTACK_BASE
    recording = RecordingPaystack(PAYSTACK_SECRET)
    monkeypatch.setattr(paystack, "TRANSPORT", recording)
    return recording


@pytest.fixture
def naira_plan(db: None) -> Plan:
    plan = Plan.objects.create(key="naira", name="Naira", currency="NGN")
    plan_billing_mode_set(plan=plan, mode=BillingMode.PAYSTACK_INVOICES)
    return plan


@pytest.fixture
def naira_invoice(acme: Customer, naira_plan: Plan, make_invoice: Callable[..., Invoice]) -> Invoice:
    acme.email = "ap@acme.test"
    acme.save()
    return make_invoice(acme, [(1234550, "LLM tokens"), (500000, "Base fee")], plan=naira_plan, currency="NGN")


_numbers = iter(range(1, 10**6))


@pytest.fixture
def make_invoice() -> Callable[..., Invoice]:
    """A finalized invoice built directly: lines as (amount_minor, description)."""

    def make(customer: Customer, lines: list[tuple[int, str]], *, credits_minor: int = 0, plan: Any = None,
             month: int = 1, total_minor: int | None = None, currency: str = "USD", tax_minor: int = 0,
             tax_rate: Any = None) -> Invoice:
        subtotal = sum(amount for amount, _ in lines)
        invoice = Invoice.objects.create(
            customer=customer, plan=plan, currency=currency,
            period_start=datetime(2026, month, 1, tzinfo=timezone.utc),
            period_end=datetime(2026, month + 1, 1, tzinfo=timezone.utc),
            subtotal_minor=subtotal, credits_minor=credits_minor, tax_minor=tax_minor, tax_rate=tax_rate,
            total_minor=subtotal - credits_minor + tax_minor if total_minor is None else total_minor)
        for position, (amount, description) in enumerate(lines, start=1):
            InvoiceLine.objects.create(invoice=invoice, position=position, kind=InvoiceLine.Kind.CHARGE,
                                       description=description, amount_minor=amount)
        invoice.status = Invoice.Status.FINALIZED
        invoice.number = f"TG-T{next(_numbers):06d}"
        invoice.finalized_at = datetime.now(timezone.utc)
        invoice.save()
        return invoice

    return make


def after_backoff(row: Any) -> datetime:
    """A moment just after the row's retry is due."""
    assert row.next_attempt_at is not None
    return row.next_attempt_at + timedelta(seconds=1)
