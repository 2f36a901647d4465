"""A plan's tax rate (the optional ``tax_rate`` of a rate-card version): validated, exported, and used by the
invoice and the upcoming invoice between the customer's own rate and the installation's default."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import yaml

from billing.catalog.errors import CatalogCode
from billing.catalog.schema import CatalogError
from billing.catalog.selectors import catalog_export
from billing.catalog.services import catalog_import
from billing.invoicing import services
from billing.invoicing.compute import upcoming_invoice
from billing.invoicing.models import Invoice
from billing.invoicing.selectors import invoice_verify
from billing.usage.rollups import rollup_until_current
from tests import factories

pytestmark = pytest.mark.django_db
UTC = timezone.utc
OCT = datetime(2026, 10, 1, tzinfo=UTC)
CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
plans:
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2024-01-01T00:00:00Z"
    base_fee: "100.00"
    tax_rate: "7.5"
    charges:
      - {meter: llm_tokens, model: per_unit, unit_price: "0.001"}
"""


@pytest.fixture
def pro(acme: Any, settings: Any) -> Any:
    settings.TOLLGATE_TAX_RATE = "20"
    catalog_import(text=CATALOG, actor="t")
    factories.subscribe(acme, "pro", start=OCT)
    return acme


def finalized(customer: Any) -> Invoice:
    factories.send(factories.event("a", "2026-10-10T00:00:00Z", "5005", "llm_tokens"),
                   now=datetime(2026, 10, 12, tzinfo=UTC))
    at = datetime(2026, 11, 1, 1, tzinfo=UTC)
    services.periods_close(now=at)
    rollup_until_current(now=at + timedelta(days=1))
    services.periods_finalize(now=at + timedelta(days=1))
    return Invoice.objects.get(customer=customer, period_start=OCT, kind="invoice")


@pytest.mark.parametrize("rate, message", [("120", "a percent from 0 to 100"), ("-1", "a percent from 0 to 100"),
                                           ("7.1234", "at most 3 decimal places")])
def test_a_plan_tax_rate_outside_0_to_100_percent_or_finer_than_the_invoice_stores_is_refused(
        rate: str, message: str) -> None:
    with pytest.raises(CatalogError) as refused:
        catalog_import(text=CATALOG.replace('tax_rate: "7.5"', f'tax_rate: "{rate}"'), actor="t")
    assert refused.value.code == CatalogCode.INVALID_CATALOG
    assert refused.value.problems == [("plans[0].tax_rate", message)]


def test_the_plan_tax_rate_is_exported_and_a_version_without_one_keeps_its_shape() -> None:
    catalog_import(text=CATALOG, actor="t")
    catalog_import(text=CATALOG.replace('    tax_rate: "7.5"\n', "").replace("2024-01-01", "2025-01-01"), actor="t")
    plans = yaml.safe_load(yaml.safe_dump(catalog_export()))["plans"]
    assert [plan.get("tax_rate") for plan in plans] == ["7.5", None]
    assert "tax_rate" not in plans[1]


def test_the_invoice_is_taxed_at_the_plans_rate_over_the_default_and_the_replay_reconciles(pro: Any) -> None:
    invoice = finalized(pro)
    # 100.00 base + 5005 x 0.001 = 105.005 -> 105.01; 7.5% of 105.01 = 7.87575 -> 7.88 (rounded once)
    assert (invoice.subtotal_minor, invoice.tax_rate, invoice.tax_minor) == (10501, Decimal("7.5"), 788)
    assert invoice.total_minor == 10501 + 788
    assert invoice_verify(invoice=invoice) == []


def test_a_customers_own_rate_overrides_the_plans(pro: Any) -> None:
    pro.tax_rate = Decimal("19")
    pro.save()
    invoice = finalized(pro)
    assert (invoice.tax_rate, invoice.tax_minor) == (Decimal("19"), 1995)  # 19% of 105.01 = 19.9519


def test_a_reverse_charge_customer_pays_no_tax_whatever_the_plans_rate(pro: Any) -> None:
    pro.tax_reverse_charge = True
    pro.save()
    invoice = finalized(pro)
    assert invoice.tax_minor == 0 and invoice.total_minor == invoice.subtotal_minor and invoice.tax_note


def test_without_a_plan_rate_the_default_applies_and_a_new_version_changes_the_rate(pro: Any) -> None:
    # a version from 15 October without a rate: the period ends under it, so the default (20%) applies
    catalog_import(text=CATALOG.replace('    tax_rate: "7.5"\n', "").replace("2024-01-01", "2026-10-15"), actor="t")
    invoice = finalized(pro)
    assert (invoice.tax_rate, invoice.tax_minor) == (Decimal("20"), 2100)  # 20% of 105.01 = 21.002


def test_the_upcoming_invoice_is_taxed_at_the_plans_rate(pro: Any) -> None:
    factories.send(factories.event("a", "2026-10-10T00:00:00Z", "5005", "llm_tokens"),
                   now=datetime(2026, 10, 12, tzinfo=UTC))
    upcoming = upcoming_invoice(customer=pro, now=datetime(2026, 10, 20, tzinfo=UTC))
    assert upcoming is not None
    body = upcoming.as_dict()
    assert (body["tax_rate"], body["tax_minor"], body["total_minor"]) == ("7.5", 788, 10501 + 788)


def test_the_plans_api_sets_a_version_tax_rate_and_refuses_one_above_100(admin: Any) -> None:
    catalog_import(text=CATALOG, actor="t")
    body = {"effective_from": "2030-01-01T00:00:00Z", "base_fee": "100", "tax_rate": "5",
            "charges": [{"meter": "llm_tokens", "model": "per_unit", "unit_price": "0.001"}]}

    created = admin.post("/api/v1/plans/pro/versions", body, format="json")
    refused = admin.post("/api/v1/plans/pro/versions", {**body, "effective_from": "2031-01-01T00:00:00Z",
                                                        "tax_rate": "100.5"}, format="json")

    assert created.status_code == 201, created.json()
    assert created.json()["tax_rate"] == "5"
    assert refused.status_code == 422 and "tax_rate" in refused.json()["error"]["fields"]
