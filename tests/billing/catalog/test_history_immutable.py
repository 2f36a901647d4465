"""History cannot be rewritten: a meter's definition once it has events, a subscription's past, and (with
the invoices' own tests) finalized invoices. The services refuse, the admin shows the fields read-only, and
the database refuses too (a trigger on both databases for meters, on PostgreSQL for billed subscriptions)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction

from billing.audit.models import AuditEntry
from billing.catalog.models import Meter, Plan, Subscription
from billing.catalog.services import meter_update, subscription_set
from billing.common.errors import DomainError
from billing.invoicing import services as invoicing
from billing.invoicing.models import Invoice
from billing.usage.rollups import rollup_until_current
from tests import factories

UTC = timezone.utc
OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
plans:
  - {key: pro, name: Pro, currency: USD, effective_from: "2024-01-01T00:00:00Z", base_fee: "10.00",
     charges: [{meter: llm_tokens, model: per_unit, unit_price: "0.01"}]}
  - {key: max, name: Max, currency: USD, effective_from: "2024-01-01T00:00:00Z", base_fee: "90.00",
     charges: [{meter: llm_tokens, model: per_unit, unit_price: "0.001"}]}
"""


@pytest.fixture
def used_meter(acme: Any) -> Meter:
    factories.subscribe(acme, "pro", start=OCT, catalog_text=CATALOG)
    factories.send(factories.event("e1", "2026-10-10T00:00:00Z", "100"), now=datetime(2026, 10, 12, tzinfo=UTC))
    return Meter.objects.get(key="llm_tokens")


def _sql_update_refused(statement: str, params: list[Any]) -> None:
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, params)


@pytest.mark.django_db
def test_a_meter_with_events_refuses_a_new_aggregation_unit_or_unique_by(used_meter: Meter) -> None:
    for change in ({"aggregation": "max"}, {"unit": "kilotoken"}, {"aggregation": "unique_count", "unique_by": "model"}):
        with pytest.raises(DomainError) as refused:
            meter_update(meter=used_meter, data=change)
        assert refused.value.code == "meter_immutable" and "has usage events" in refused.value.message
    # below the service: the database's trigger
    _sql_update_refused("UPDATE catalog_meter SET aggregation = 'max' WHERE id = %s", [used_meter.pk])
    _sql_update_refused("UPDATE catalog_meter SET unit = 'kt' WHERE id = %s", [used_meter.pk])
    assert Meter.objects.get(pk=used_meter.pk).aggregation == "sum"
    # a rename is harmless, and audited
    meter_update(meter=used_meter, data={"name": "Tokens"}, actor="system:test")
    entry = AuditEntry.objects.filter(action="meter.updated", object_id=str(used_meter.pk)).get()
    assert (entry.before or {})["name"] == "LLM tokens" and (entry.after or {})["name"] == "Tokens"


@pytest.mark.django_db
def test_a_meter_without_events_can_still_be_redefined(tokens_meter: Meter) -> None:
    meter = meter_update(meter=tokens_meter, data={"aggregation": "max", "unit": "kt"})

    assert (meter.aggregation, meter.unit) == ("max", "kt")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE catalog_meter SET aggregation = 'sum' WHERE id = %s", [meter.pk])
    assert Meter.objects.get(pk=meter.pk).aggregation == "sum"


@pytest.mark.django_db
def test_the_admin_shows_a_used_meters_definition_read_only_and_keeps_it(used_meter: Meter, client: Any,
                                                                          django_user_model: Any) -> None:
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    url = f"/admin/catalog/meter/{used_meter.pk}/change/"

    page = client.get(url).content.decode()
    assert 'name="aggregation"' not in page and 'name="name"' in page
    client.post(url, {"key": "llm_tokens", "name": "Tokens", "aggregation": "max", "unit": "x", "unique_by": ""})

    meter = Meter.objects.get(pk=used_meter.pk)
    assert (meter.name, meter.aggregation, meter.unit) == ("Tokens", "sum", "token")


@pytest.mark.django_db
def test_a_change_of_plan_cannot_end_the_current_subscription_in_the_past(acme: Any) -> None:
    now = datetime(2026, 10, 15, tzinfo=UTC)
    factories.subscribe(acme, "pro", start=OCT, catalog_text=CATALOG)

    with pytest.raises(DomainError) as refused:
        subscription_set(customer=acme, plan=Plan.objects.get(key="max"), start=now - timedelta(days=3), now=now,
                         actor="t")
    assert "cannot be ended in the past" in str(refused.value.fields)
    assert Subscription.objects.get(customer=acme).end is None
    subscription_set(customer=acme, plan=Plan.objects.get(key="max"), start=now, now=now, actor="t")
    assert list(Subscription.objects.filter(customer=acme).values_list("plan__key", "end")) == [("pro", now), ("max", None)]


@pytest.mark.django_db
def test_the_admin_shows_a_started_subscription_read_only(acme: Any, client: Any, django_user_model: Any) -> None:
    subscription = factories.subscribe(acme, "pro", start=OCT, catalog_text=CATALOG)
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))

    page = client.get(f"/admin/catalog/subscription/{subscription.pk}/change/").content.decode()
    assert 'name="start"' not in page and 'name="plan"' not in page and 'name="end_0"' in page
    response = client.post(f"/admin/catalog/subscription/{subscription.pk}/change/",
                           {"end_0": "2026-10-02", "end_1": "00:00:00"})
    assert response.status_code == 200 and "Cannot be in the past" in response.content.decode()
    assert client.get(f"/admin/catalog/subscription/{subscription.pk}/delete/").status_code == 403
    assert Subscription.objects.get(pk=subscription.pk).end is None


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgres_refuses_to_rewrite_a_billed_subscription(used_meter: Meter, acme: Any) -> None:
    invoicing.periods_close(now=datetime(2026, 11, 1, 1, tzinfo=UTC))
    rollup_until_current(now=datetime(2026, 11, 2, tzinfo=UTC))
    invoicing.periods_finalize(now=datetime(2026, 11, 2, tzinfo=UTC))
    assert Invoice.objects.get(customer=acme, period_start=OCT).status == "finalized"
    subscription = Subscription.objects.get(customer=acme)
    table = Subscription._meta.db_table
    other_plan = Plan.objects.get(key="max").pk

    for statement, params in (
        (f"UPDATE {table} SET start = %s WHERE id = %s", [OCT + timedelta(days=3), subscription.pk]),
        (f"UPDATE {table} SET plan_id = %s WHERE id = %s", [other_plan, subscription.pk]),
        (f'UPDATE {table} SET "end" = %s WHERE id = %s', [OCT + timedelta(days=20), subscription.pk]),
        (f"DELETE FROM {table} WHERE id = %s", [subscription.pk]),
        (f"INSERT INTO {table} (customer_id, plan_id, start, created_at) VALUES (%s, %s, %s, now())",
         [acme.pk, other_plan, OCT - timedelta(days=30)]),
    ):
        _sql_update_refused(statement, params)
    # the future stays open: end it after the billed period, start the next plan there
    with connection.cursor() as cursor:
        cursor.execute(f'UPDATE {table} SET "end" = %s WHERE id = %s', [NOV + timedelta(days=10), subscription.pk])
        cursor.execute(f"INSERT INTO {table} (customer_id, plan_id, start, created_at) VALUES (%s, %s, %s, now())",
                       [acme.pk, other_plan, NOV + timedelta(days=10)])
    assert Subscription.objects.filter(customer=acme).count() == 2


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgres_refuses_to_redefine_a_used_meter(used_meter: Meter) -> None:
    for column, value in (("aggregation", "max"), ("unit", "kt"), ("unique_by", "model")):
        _sql_update_refused(f"UPDATE catalog_meter SET {column} = %s WHERE id = %s", [value, used_meter.pk])
    with connection.cursor() as cursor:
        cursor.execute("UPDATE catalog_meter SET name = 'Tokens' WHERE id = %s", [used_meter.pk])
    assert Meter.objects.get(pk=used_meter.pk).name == "Tokens"
