"""A rate-card version's terms, typed (billing/catalog/ratecard.py): parsed once per version, the same
canonical definition back, and the only way anything outside the catalog reads a version's terms."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from billing.catalog import ratecard, schema
from billing.catalog.models import RateCardVersion
from billing.catalog.services import catalog_import
from billing.common import process_caches
from tests import factories

ROOT = Path(__file__).resolve().parents[3]
CHARGES: list[dict[str, Any]] = [
    {"meter": "llm_tokens", "model": "per_unit", "unit_price": "0.0000000123", "name": "Tokens",
     "filter": {"region": "eu", "model": "gpt-4o"},
     "markup": {"dimension": "provider", "percent": {"openai": "12.5", "anthropic": "10"}, "default": "5"}},
    {"meter": "llm_tokens", "model": "graduated",
     "tiers": [{"up_to": "1000", "unit_price": "0.002", "flat_price": "1.50"}, {"up_to": None, "unit_price": "0.001"}]},
    {"meter": "llm_tokens", "model": "volume", "tiers": [{"up_to": "10", "unit_price": "3"}, {"up_to": None, "unit_price": "2"}]},
    {"meter": "llm_tokens", "model": "package", "package_size": "100", "package_price": "4", "free_units": "50"},
    {"meter": "llm_tokens", "model": "flat_overage", "flat_price": "20", "included": "1000", "overage_unit_price": "0.01"},
]
LIMITS = [{"meter": "llm_tokens", "hard": "1000000", "soft": "80%"}, {"meter": "api_calls", "soft": "500"}]


def _plan() -> schema.PlanIn:
    return schema.parse_plan(factories.plan("pro", CHARGES, base_fee="99.00", limits=LIMITS, spend_cap="250"))


def test_the_card_gives_back_the_canonical_definition_key_for_key() -> None:
    # given the definition the catalog stores for a plan using every model, a filter, a markup and limits
    problems: list[tuple[str, str]] = []
    definition = schema.validate_plan(_plan(), "", {"llm_tokens", "api_calls"}, problems)
    assert problems == []

    # when it is parsed and written back
    again = ratecard.parse(definition).as_definition()

    # then it is the same, in the same key order (the export and the console's editor show it)
    assert json.dumps(again) == json.dumps(definition)


def test_the_card_holds_typed_terms() -> None:
    definition = schema.validate_plan(_plan(), "", {"llm_tokens", "api_calls"}, [])

    card = ratecard.parse(definition)

    assert card.base_fee == D("99") and card.spend_cap == D("250")
    first = card.charges[0]
    assert dict(first.filter or {}) == {"model": "gpt-4o", "region": "eu"} and first.name == "Tokens"
    assert first.spec.unit_price == D("0.0000000123") and first.line_unit_price == D("0.0000000123")
    assert first.markup is not None
    assert [first.markup.percent_for(g) for g in ("openai", "mistral", None)] == [D("12.5"), D(5), D(5)]
    assert card.charges[1].spec.tiers[0].flat_price == D("1.5") and card.charges[1].markup is None
    assert card.charges[3].spec.package_size == D(100) and card.charges[3].line_unit_price is None
    assert card.charges[4].line_unit_price == D("0.01")
    assert card.hard_limit("llm_tokens") == D(1000000) and card.hard_limit("api_calls") is None


@pytest.mark.parametrize(("limit", "soft"), [
    ({"meter": "m", "hard": "1000", "soft": "80%"}, D(800)),
    ({"meter": "m", "hard": "3", "soft": "33.5%"}, D("1.005")),
    ({"meter": "m", "hard": "1000", "soft": "700"}, D(700)),
    ({"meter": "m", "soft": "700", "hard": None}, D(700)),
    ({"meter": "m", "hard": "1000", "soft": None}, None),
])
def test_one_parser_reads_a_soft_limit_as_a_quantity_or_a_share_of_the_hard_one(limit: dict, soft: D | None) -> None:
    parsed = ratecard.limit_of(limit)

    assert parsed.soft_limit == soft
    assert parsed.has_soft is (limit["soft"] is not None)
    assert parsed.as_definition() == limit


@pytest.mark.django_db
def test_a_version_is_parsed_once_per_process() -> None:
    # given a stored version
    catalog_import(text=factories.metered(hard="100", soft="80%"), actor="t")
    version = RateCardVersion.objects.get()

    # when it is read twice, from two instances
    first = version.rate_card
    second = RateCardVersion.objects.get(pk=version.pk).rate_card

    # then the same card serves both, until the process caches are cleared
    assert first is second
    assert first.limits[0].soft_limit == D(80)
    assert "billing.catalog.ratecard._CARDS" in process_caches.registered()
    process_caches.clear_all()
    assert version.rate_card is not first and version.rate_card == first


def test_an_unsaved_version_is_parsed_without_being_kept() -> None:
    version = RateCardVersion(number=1, effective_from=datetime(2026, 1, 1, tzinfo=timezone.utc),
                              definition={"base_fee": "5", "charges": [], "limits": [], "spend_cap": None})

    assert version.rate_card.base_fee == D(5)
    assert ratecard.cached(0, datetime(2026, 1, 1, tzinfo=timezone.utc)) is None


def test_usage_counter_keys_derive_from_the_charges_filter_and_markup_group() -> None:
    # the ledger's usage-counter ids derive from these keys: they must stay what they are
    from types import SimpleNamespace

    from billing.guardrails.limits import counter_keys, matching_charges

    card = ratecard.parse(schema.validate_plan(_plan(), "", {"llm_tokens", "api_calls"}, []))
    event = SimpleNamespace(meter=SimpleNamespace(key="llm_tokens"),
                            dimensions={"region": "eu", "model": "gpt-4o", "provider": "openai"})

    matching = matching_charges(card, event)  # type: ignore[arg-type]

    assert [c.model for c, _ in matching] == ["per_unit", "graduated", "volume", "package", "flat_overage"]
    assert counter_keys(matching) == ["model=gpt-4o,region=eu|openai", "|", "|#1", "|#2", "|#3"]


# a version's stored dict, read directly: ``version.definition``, ``definition[...]``, ``definition.get(...)``
RAW_READ = re.compile(r"\.definition\b|\bdefinition\s*\[|\bdefinition\.get\(")


def test_nothing_outside_the_catalog_reads_a_versions_definition_dict() -> None:
    offenders = []
    for package in ("billing", "portal", "ledger"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith("billing/catalog/"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if RAW_READ.search(line):
                    offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == [], "read the typed rate card (version.rate_card) instead:\n" + "\n".join(offenders)
