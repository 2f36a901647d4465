"""OpenAPI descriptions of the catalog's bodies: plans as catalog-file entries (contract.md, "Catalog file"),
subscriptions. Descriptions only: plans are parsed by ``billing.catalog.schema`` (msgspec), not by these."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample
from rest_framework import serializers

from billing.catalog.models import Meter
from billing.common.openapi import DecimalText


class TierDoc(serializers.Serializer):
    up_to = DecimalText(allow_null=True, required=False, help_text="inclusive, cumulative; null for the last tier")
    unit_price = DecimalText()
    flat_price = DecimalText(required=False)


class MarkupDoc(serializers.Serializer):
    dimension = serializers.CharField(required=False)
    percent = serializers.DictField(child=DecimalText())
    default = DecimalText(required=False)


class ChargeDoc(serializers.Serializer):
    meter = serializers.CharField()
    model = serializers.ChoiceField(choices=["per_unit", "graduated", "volume", "package", "flat_overage"])
    name = serializers.CharField(required=False)
    filter = serializers.DictField(child=serializers.CharField(), required=False)
    tiers = TierDoc(many=True, required=False)
    unit_price = DecimalText(required=False)
    package_size = DecimalText(required=False)
    package_price = DecimalText(required=False)
    free_units = DecimalText(required=False)
    flat_price = DecimalText(required=False)
    included = DecimalText(required=False)
    overage_unit_price = DecimalText(required=False)
    markup = MarkupDoc(required=False)


class LimitDoc(serializers.Serializer):
    meter = serializers.CharField()
    hard = DecimalText(allow_null=True, required=False)
    soft = serializers.CharField(allow_null=True, required=False, help_text='a quantity, or a percent of hard ("80%")')


class RunLimitsDoc(serializers.Serializer):
    max_steps = serializers.IntegerField(allow_null=True, required=False)
    max_spend = DecimalText(allow_null=True, required=False)
    max_duration_seconds = serializers.IntegerField(allow_null=True, required=False)


class AnomalyTermsDoc(serializers.Serializer):
    window_minutes = serializers.IntegerField()
    factor = DecimalText()
    min_spend = DecimalText()
    action = serializers.ChoiceField(choices=["alert", "pause"], required=False)


class VersionTermsDoc(serializers.Serializer):
    """A rate-card version's terms (``POST /plans/{key}/versions``: without the plan's key, name, currency)."""

    effective_from = serializers.DateTimeField(required=False, help_text="RFC 3339 with an offset; default: now")
    base_fee = DecimalText(required=False)
    charges = ChargeDoc(many=True, required=False)
    limits = LimitDoc(many=True, required=False)
    spend_cap = DecimalText(allow_null=True, required=False)
    run_limits = RunLimitsDoc(required=False)
    anomaly = AnomalyTermsDoc(required=False)
    tax_rate = DecimalText(required=False, help_text="percent, 0 to 100 (optional): overrides TOLLGATE_TAX_RATE; a "
                                                     "customer's own rate overrides it")


class PlanDoc(VersionTermsDoc):
    """A plan with its first version: a catalog-file plan entry."""

    key = serializers.CharField()
    name = serializers.CharField()
    currency = serializers.CharField()
    interval = serializers.ChoiceField(choices=["month"], required=False)
    effective_from = serializers.DateTimeField(help_text="RFC 3339 with an offset")


class PlanEntryDoc(serializers.Serializer):
    """One version of a plan, as ``catalog export`` writes it."""

    key = serializers.CharField()
    name = serializers.CharField()
    currency = serializers.CharField()
    interval = serializers.CharField()
    effective_from = serializers.DateTimeField()
    version = serializers.IntegerField()
    base_fee = DecimalText()
    charges = ChargeDoc(many=True)
    limits = LimitDoc(many=True)
    spend_cap = DecimalText(required=False, help_text="absent when the version has no cap")
    run_limits = RunLimitsDoc(required=False)
    anomaly = AnomalyTermsDoc(required=False)
    tax_rate = DecimalText(required=False, help_text="percent; absent when the version sets none")


class MeterOut(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    unit = serializers.CharField()
    aggregation = serializers.ChoiceField(choices=Meter.Aggregation.values)
    unique_by = serializers.CharField(allow_blank=True)


class SubscriptionDoc(serializers.Serializer):
    plan = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField(allow_null=True)


PLAN_EXAMPLE_VALUE = {
    "key": "pro", "name": "Pro", "currency": "USD", "interval": "month", "effective_from": "2026-01-01T00:00:00Z",
    "base_fee": "99.00", "charges": [{"meter": "api_calls", "model": "per_unit", "unit_price": "0.002"}],
    "limits": [{"meter": "api_calls", "soft": "80%", "hard": "1000000"}], "spend_cap": "500.00"}
PLAN_EXAMPLE = OpenApiExample("plan", request_only=True, value=PLAN_EXAMPLE_VALUE)
VERSION_EXAMPLE = OpenApiExample("version", request_only=True, value={
    "base_fee": "129.00", "charges": [{"meter": "api_calls", "model": "per_unit", "unit_price": "0.0015"}]})
