"""The catalog file: all-or-nothing import with paths, export/import identity, immutable versions."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command
from django.db import transaction

from billing.audit.models import AuditEntry
from billing.catalog.models import Meter, Plan, RateCardVersion
from billing.catalog.schema import CatalogError
from billing.catalog.selectors import catalog_export
from billing.catalog.services import catalog_import

pytestmark = pytest.mark.django_db
EXAMPLE = (Path(__file__).resolve().parents[3] / "docs" / "examples" / "catalog.yaml").read_text()


def _state() -> tuple:
    return (list(Meter.objects.values_list("key", "aggregation")), list(Plan.objects.values_list("key", "name")),
            list(RateCardVersion.objects.values_list("plan__key", "number", "effective_from")),
            AuditEntry.objects.count())


def test_contract_example_imports():
    counts = catalog_import(text=EXAMPLE, actor="t")

    assert counts == {"meters_created": 4, "plans_created": 1, "versions_created": 1}
    version = RateCardVersion.objects.get()
    assert version.definition["charges"][0]["tiers"][1] == {"up_to": "100000", "unit_price": "0.0015", "flat_price": "0"}
    assert version.definition["limits"] == [{"meter": "llm_tokens", "soft": "800000", "hard": "1000000"}]


@pytest.mark.parametrize(("change", "path"), [
    (("up_to: 100000,", "up_to: 5000,"), "plans[0].charges[0].tiers[1].up_to"),
    (("{up_to: null, unit_price: \"0.001\"}", "{up_to: 200000, unit_price: \"0.001\"}"), "plans[0].charges[0].tiers[2].up_to"),
    (("unit_price: \"0.0015\"", "unit_price: \"-1\""), "plans[0].charges[0].tiers[1].unit_price"),
    (("unit_price: \"0.0015\"", "unit_price: \"abc\""), "plans[0].charges[0].tiers[1].unit_price"),
    (("currency: USD", "currency: XYZ"), "plans[0].currency"),
    (("model: graduated", "model: tiered"), "plans[0].charges[0].model"),
    (("meter: gpu_seconds, model", "meter: nope, model"), "plans[0].charges[3].meter"),
    (("package_size: 1000", "package_size: 0"), "plans[0].charges[2].package_size"),
    (("soft: 800000", "soft: 2000000"), "plans[0].limits[0].soft"),
    (("aggregation: count}", "aggregation: median}"), "meters[2].aggregation"),  # [0] is the brand_new meter added below
    (("base_fee: \"99.00\"", "base_fee: \"99.00\"\n    surprise: 1"), "plans[0].surprise"),
])
def test_invalid_file_is_rejected_naming_the_path_and_changes_nothing(change, path):
    catalog_import(text=EXAMPLE.replace("key: pro", "key: base"), actor="t")  # something already there
    before = _state()

    with pytest.raises(CatalogError) as caught:
        catalog_import(text=EXAMPLE.replace(*change).replace("meters:\n", "meters:\n  - {key: brand_new, aggregation: sum}\n"),
                       actor="t")

    assert path in caught.value.as_fields(), caught.value.problems
    assert _state() == before  # not even the valid new meter was written


def test_reimport_and_export_import_change_nothing():
    catalog_import(text=EXAMPLE, actor="t")
    exported = catalog_export()
    before = _state()

    assert catalog_import(text=EXAMPLE, actor="t") == {"meters_created": 0, "plans_created": 0, "versions_created": 0}
    assert catalog_import(text=yaml.safe_dump(exported), actor="t")["versions_created"] == 0
    assert _state() == before
    assert catalog_export() == exported


def test_export_then_import_into_an_empty_catalog_is_the_identity():
    catalog_import(text=EXAMPLE, actor="t")
    catalog_import(text=EXAMPLE.replace('effective_from: "2026-01-01T00:00:00Z"', 'effective_from: "2026-06-01T00:00:00Z"')
                   .replace('base_fee: "99.00"', 'base_fee: "149.00"'), actor="t")
    exported = catalog_export()
    text = yaml.safe_dump(exported)

    with transaction.atomic():
        RateCardVersion.objects.all()._raw_delete(RateCardVersion.objects.db)
        AuditEntry.objects.all().delete()
        Plan.objects.all().delete()
        Meter.objects.all().delete()
        assert catalog_export() == {"meters": [], "plans": []}
        catalog_import(text=text, actor="t")
        assert catalog_export() == exported
        transaction.set_rollback(True)
    assert [e["version"] for e in exported["plans"]] == [1, 2]


def test_a_version_in_effect_cannot_be_changed_in_place():
    catalog_import(text=EXAMPLE, actor="t")

    with pytest.raises(CatalogError) as caught:
        catalog_import(text=EXAMPLE.replace('base_fee: "99.00"', 'base_fee: "1.00"'), actor="t")

    assert "plans[0].effective_from" in caught.value.as_fields()
    assert RateCardVersion.objects.get().definition["base_fee"] == "99"
    version = RateCardVersion.objects.get()
    version.definition = {}
    with pytest.raises(ValueError, match="immutable"):
        version.save()


def test_json_file_is_accepted_with_exact_decimals(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text('{"meters": [{"key": "t", "aggregation": "sum"}], "plans": [{"key": "p", "name": "P", "currency": "USD",'
                    ' "effective_from": "2026-01-01T00:00:00Z", "charges": [{"meter": "t", "model": "per_unit",'
                    ' "unit_price": 0.0000000123}]}]}')

    call_command("catalog", "import", str(path), stdout=StringIO())

    assert RateCardVersion.objects.get().definition["charges"][0]["unit_price"] == "0.0000000123"


def test_command_reports_every_problem_and_export_round_trips(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.replace("up_to: 100000,", "up_to: 5000,").replace("currency: USD", "currency: XYZ"))

    with pytest.raises(CommandError) as caught:
        call_command("catalog", "import", str(bad), stdout=StringIO())
    assert "plans[0].charges[0].tiers[1].up_to" in str(caught.value) and "plans[0].currency" in str(caught.value)

    good = tmp_path / "good.yaml"
    good.write_text(EXAMPLE)
    call_command("catalog", "import", str(good), stdout=StringIO())
    out = StringIO()
    call_command("catalog", "export", stdout=out)
    again = tmp_path / "again.yaml"
    again.write_text(out.getvalue())
    call_command("catalog", "import", str(again), stdout=StringIO())
    out2 = StringIO()
    call_command("catalog", "export", stdout=out2)
    assert out2.getvalue() == out.getvalue()
