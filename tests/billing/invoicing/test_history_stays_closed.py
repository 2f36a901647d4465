"""History stays closed: a subscription cannot start (or change) inside a billing period that is already
closed and invoiced, like a late event (422 period_closed); nothing is billed again."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from billing.catalog.models import Plan, Subscription
from billing.catalog.services import catalog_import, subscription_set
from billing.common.errors import DomainError
from billing.invoicing import services
from billing.invoicing.models import Invoice
from tests.conftest import post_json

pytestmark = pytest.mark.django_db
UTC = timezone.utc
CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
plans:
  - {key: basic, name: Basic, currency: USD, effective_from: "2024-01-01T00:00:00Z", base_fee: "10.00", charges: []}
  - {key: pro, name: Pro, currency: USD, effective_from: "2024-01-01T00:00:00Z", base_fee: "99.00", charges: []}
"""


@pytest.fixture
def closed_through_last_month(acme: Any) -> datetime:
    """Basic since January 2026, every period up to last month closed and invoiced; returns the open one's start."""
    catalog_import(text=CATALOG, actor="t")
    now = datetime.now(UTC)
    subscription_set(customer=acme, plan=Plan.objects.get(key="basic"), start=datetime(2026, 1, 1, tzinfo=UTC),
                     now=now, actor="t")
    open_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    services.periods_close(now=open_start + timedelta(hours=2))
    services.periods_finalize(now=open_start + timedelta(hours=3))
    return open_start


@pytest.mark.parametrize("start", ["2026-01-15T00:00:00Z", "2026-02-01T00:00:00Z"])
def test_a_subscription_back_dated_into_a_closed_period_is_422_period_closed(admin, acme, closed_through_last_month,
                                                                            start):
    invoices = Invoice.objects.count()
    before = list(Subscription.objects.values_list("plan__key", "start", "end"))

    response = post_json(admin, "/api/v1/customers/acme-co/subscription", {"plan": "pro", "start": start})

    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["code"] == "period_closed"
    assert error["fields"] == {"start": [f"Must be at or after {closed_through_last_month.isoformat()}."]}
    assert list(Subscription.objects.values_list("plan__key", "start", "end")) == before  # nothing rewritten
    assert Invoice.objects.count() == invoices


def test_a_first_plan_may_start_at_the_first_instant_of_the_open_period(admin, globex, closed_through_last_month):
    response = post_json(admin, "/api/v1/customers/globex/subscription",
                         {"plan": "pro", "start": closed_through_last_month.isoformat()})

    assert response.status_code == 201, response.content
    assert response.json()["plan"] == "pro"


def test_a_change_may_start_in_the_open_period(admin, acme, closed_through_last_month):
    response = post_json(admin, "/api/v1/customers/acme-co/subscription",
                         {"plan": "pro", "start": (datetime.now(UTC) + timedelta(minutes=1)).isoformat()})

    assert response.status_code == 201, response.content


def test_a_change_without_a_start_takes_the_next_period_as_before(admin, acme, closed_through_last_month):
    response = post_json(admin, "/api/v1/customers/acme-co/subscription", {"plan": "pro"})

    assert response.status_code == 201


def test_a_new_customers_first_plan_cannot_start_in_a_closed_period_either(globex, closed_through_last_month):
    with pytest.raises(DomainError) as refused:
        subscription_set(customer=globex, plan=Plan.objects.get(key="pro"), start=datetime(2026, 3, 1, tzinfo=UTC),
                         now=datetime.now(UTC), actor="t")

    assert refused.value.code == "period_closed"
    assert not Subscription.objects.filter(customer=globex).exists()
