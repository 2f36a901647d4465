"""OpenAPI description of an anomaly as the API shows it (``anomaly_as_dict``; docs/api.md, "Anomalies")."""

from __future__ import annotations

from rest_framework import serializers

from billing.common.openapi import DecimalText


class WindowDoc(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    minutes = serializers.IntegerField()


class AnomalyPauseDoc(serializers.Serializer):
    pause_id = serializers.CharField()
    active = serializers.BooleanField()


class AnomalyDoc(serializers.Serializer):
    id = serializers.CharField()
    customer = serializers.CharField()
    currency = serializers.CharField()
    status = serializers.ChoiceField(choices=["open", "resolved"])
    opened_at = serializers.DateTimeField()
    window = WindowDoc()
    window_spend = DecimalText()
    baseline_rate = DecimalText()
    expected_spend = DecimalText()
    factor = DecimalText()
    min_spend = DecimalText()
    action = serializers.ChoiceField(choices=["alert", "pause"])
    pause = AnomalyPauseDoc(allow_null=True)
    resolution = serializers.CharField(allow_null=True)
    note = serializers.CharField(allow_blank=True)
    resolved_by = serializers.CharField(allow_null=True)
    resolved_at = serializers.DateTimeField(allow_null=True)
