"""OpenAPI descriptions of the guardrails' answers: reservations, balance, alerts and thresholds, overrides,
pauses, runs and budgets (docs/api.md, docs/guardrails.md). Descriptions only: the bodies are built by the
selectors and services."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample
from rest_framework import serializers

from billing.catalog.openapi import AnomalyTermsDoc, LimitDoc, RunLimitsDoc
from billing.common.openapi import DecimalText


class ReservationDoc(serializers.Serializer):
    reservation_id = serializers.CharField()
    customer = serializers.CharField()
    meter = serializers.CharField()
    quantity = DecimalText()
    status = serializers.ChoiceField(choices=["pending", "settled", "released", "expired"])
    expires_at = serializers.DateTimeField()
    held = serializers.DictField(child=DecimalText(), help_text="what each ledger leg holds (quota, spend, credits...)")


class CreditDoc(serializers.Serializer):
    currency = serializers.CharField()
    posted = DecimalText()
    pending = DecimalText()
    available = DecimalText()


class QuotaDoc(serializers.Serializer):
    meter = serializers.CharField()
    unit = serializers.CharField()
    limit = DecimalText()
    used = DecimalText()
    reserved = DecimalText()
    remaining = DecimalText()
    soft_limit = DecimalText(allow_null=True)


class SpendCapDoc(serializers.Serializer):
    currency = serializers.CharField()
    cap = DecimalText()
    spent = DecimalText()
    reserved = DecimalText()
    remaining = DecimalText()


class BalanceDoc(serializers.Serializer):
    customer = serializers.CharField()
    period = serializers.IntegerField(help_text="the open period, YYYYMM")
    credits = CreditDoc(many=True)
    quotas = QuotaDoc(many=True)
    spend_cap = SpendCapDoc(allow_null=True)


class AlertDoc(serializers.Serializer):
    target = serializers.CharField()
    percent = DecimalText()
    limit = DecimalText()
    used = DecimalText()
    unit = serializers.CharField(allow_blank=True)
    crossed_at = serializers.DateTimeField()
    status = serializers.CharField()
    sent_at = serializers.DateTimeField(allow_null=True)


class AlertsDoc(serializers.Serializer):
    customer = serializers.CharField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    data = AlertDoc(many=True)  # type: ignore[assignment]  # the response key is "data"


class ThresholdDoc(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True)
    target = serializers.CharField()
    percent = DecimalText()
    source = serializers.CharField()  # type: ignore[assignment]  # the body's key is "source"
    active = serializers.BooleanField()
    limit = DecimalText(allow_null=True)
    threshold = DecimalText(allow_null=True)
    used = DecimalText(allow_null=True)
    unit = serializers.CharField(allow_null=True, allow_blank=True)
    crossed = serializers.BooleanField()


class ThresholdCreatedDoc(serializers.Serializer):
    id = serializers.IntegerField()
    target = serializers.CharField()
    percent = DecimalText()
    source = serializers.CharField()  # type: ignore[assignment]  # the body's key is "source"
    status = serializers.ChoiceField(choices=["created", "exists"])


class OverrideDoc(serializers.Serializer):
    customer = serializers.CharField()
    revision = serializers.IntegerField()
    limits = LimitDoc(many=True)
    spend_cap = DecimalText(allow_null=True, required=False)
    run_limits = RunLimitsDoc(required=False)
    anomaly = AnomalyTermsDoc(required=False)
    updated_at = serializers.DateTimeField(allow_null=True)


class OverrideInDoc(serializers.Serializer):
    limits = LimitDoc(many=True, required=False)
    spend_cap = DecimalText(allow_null=True, required=False)
    run_limits = RunLimitsDoc(required=False)
    anomaly = AnomalyTermsDoc(required=False)


class PauseDoc(serializers.Serializer):
    pause_id = serializers.CharField()
    customer = serializers.CharField()
    scope = serializers.ChoiceField(choices=["customer", "project"])
    project = serializers.CharField(allow_null=True)
    reason = serializers.CharField(allow_blank=True)
    source = serializers.CharField()  # type: ignore[assignment]  # the body's key is "source"
    created_by = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    lifted_at = serializers.DateTimeField(allow_null=True)
    active = serializers.BooleanField()


class RunDoc(serializers.Serializer):
    run_id = serializers.CharField()
    customer = serializers.CharField()
    state = serializers.ChoiceField(choices=["open", "tripped", "killed"])
    steps = serializers.IntegerField()
    spend = DecimalText()
    currency = serializers.CharField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    breaker = serializers.CharField(required=False)


class BudgetDoc(serializers.Serializer):
    budget_id = serializers.CharField()
    scope = serializers.DictField(help_text="project, dimension and/or api_key")
    amount = DecimalText()
    period = serializers.ChoiceField(choices=["month", "day"])
    action = serializers.ChoiceField(choices=["block", "alert"])
    soft = serializers.CharField(help_text='a percent of the amount ("80%")')
    created_at = serializers.DateTimeField()
    currency = serializers.CharField(allow_null=True, required=False)
    period_key = serializers.IntegerField(required=False)
    used = DecimalText(required=False)
    remaining = DecimalText(required=False)


class CreditGrantDoc(serializers.Serializer):
    customer = serializers.CharField()
    amount = DecimalText()
    currency = serializers.CharField()
    idempotency_key = serializers.CharField()
    reason = serializers.CharField(allow_blank=True)
    status = serializers.ChoiceField(choices=["created", "duplicate"])


BUDGET_EXAMPLE_VALUE = {"budget_id": "chatbot-monthly", "scope": {"dimension": {"end_user": "u-42"}}, "amount": "50.00",
                        "period": "month", "action": "block", "soft": "80%"}
BUDGET_EXAMPLE = OpenApiExample("budget", request_only=True, value=BUDGET_EXAMPLE_VALUE)
