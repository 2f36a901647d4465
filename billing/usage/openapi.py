"""OpenAPI descriptions of the usage bodies (contract.md, "Usage events"; docs/api.md). Descriptions only: the
hot path parses events with msgspec (billing.usage.contract), and the answers are built by the views."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample
from rest_framework import serializers

from billing.common.openapi import DecimalInput, DecimalText, ErrorDetailDoc
from billing.guardrails.openapi import ReservationDoc


class TraceDoc(serializers.Serializer):
    run_id = serializers.CharField(required=False, max_length=128)
    parent_id = serializers.CharField(required=False, max_length=128)
    step = serializers.IntegerField(required=False, min_value=0)
    agent = serializers.CharField(required=False, max_length=128)


class UsageEventDoc(serializers.Serializer):
    event_id = serializers.CharField(max_length=128)
    customer = serializers.CharField()
    project = serializers.CharField(required=False)
    meter = serializers.CharField(max_length=64)
    quantity = DecimalInput(required=False, help_text=">= 0 unless `corrects` is set; 1 when omitted on a count meter")
    timestamp = serializers.DateTimeField(help_text="RFC 3339 with an offset; at most 300 s in the future")
    dimensions = serializers.DictField(child=serializers.CharField(max_length=256), required=False, help_text="at most 16 keys")
    trace = TraceDoc(required=False)
    billable = serializers.BooleanField(required=False)
    reason = serializers.CharField(required=False, max_length=64)
    schema_version = serializers.IntegerField(required=False, min_value=1, max_value=1)
    corrects = serializers.CharField(required=False, max_length=128)


class StoredEventDoc(serializers.Serializer):
    event_id = serializers.CharField()
    customer = serializers.CharField()
    project = serializers.CharField(allow_null=True)
    meter = serializers.CharField()
    quantity = DecimalText()
    timestamp = serializers.DateTimeField()
    received_at = serializers.DateTimeField()
    dimensions = serializers.DictField(child=serializers.CharField(allow_blank=True))
    trace = serializers.DictField()
    billable = serializers.BooleanField()
    reason = serializers.CharField(allow_null=True)
    schema_version = serializers.IntegerField()
    corrects = serializers.CharField(allow_null=True)


class EventPageDoc(serializers.Serializer):
    data = StoredEventDoc(many=True)  # type: ignore[assignment]  # the response key is "data"
    next_cursor = serializers.CharField(allow_null=True, help_text="set whenever the page is full")


class IngestResultDoc(serializers.Serializer):
    event_id = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "rejected"])
    error = ErrorDetailDoc(required=False)


class EventBatchDoc(serializers.Serializer):
    events = UsageEventDoc(many=True)


class EventBatchResultDoc(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = IngestResultDoc(many=True)


class SettleDoc(serializers.Serializer):
    events = UsageEventDoc(many=True, help_text="the actual usage; none releases the reservation")
    customer = serializers.CharField(required=False, help_text="needed only when several customers use the id")


class SettleResultDoc(ReservationDoc, EventBatchResultDoc):
    """The reservation as it now is, and what became of each event."""


class UsageRowDoc(serializers.Serializer):
    meter = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    group = serializers.DictField()
    quantity = DecimalText()


class UsageDoc(serializers.Serializer):
    customer = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    granularity = serializers.ChoiceField(choices=["hour", "day", "month"])
    data = UsageRowDoc(many=True)  # type: ignore[assignment]


# the timestamps are replaced by "a minute ago" whenever the schema is served (portal.openapi.date_examples_now)
EVENT = {"event_id": "req-1", "customer": "acme-co", "meter": "llm_tokens", "quantity": "1200",
         "timestamp": "2026-11-24T15:07:42Z", "dimensions": {"model": "gpt-4o", "direction": "input"},
         "trace": {"run_id": "run-7", "step": 2, "agent": "planner"}}
EVENT_EXAMPLE = OpenApiExample("event", request_only=True, value=EVENT)
BATCH_EXAMPLE = OpenApiExample("batch", request_only=True, value={"events": [
    {**EVENT, "event_id": "req-2"}, {**EVENT, "event_id": "req-3", "dimensions": {"model": "gpt-4o", "direction": "output"},
                                    "quantity": 310}]})
SETTLE_EXAMPLE = OpenApiExample("settle", request_only=True, value={"events": [
    {"event_id": "req-4", "customer": "acme-co", "meter": "llm_tokens", "quantity": "3120",
     "timestamp": "2026-11-24T15:07:42Z", "dimensions": {"model": "gpt-4o", "direction": "output"}}]})
