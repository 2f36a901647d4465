"""OpenAPI descriptions of webhook endpoints and their deliveries (contract.md, "Outbound webhooks")."""

from __future__ import annotations

from rest_framework import serializers

from billing.notify.models import WebhookDelivery


class EndpointDoc(serializers.Serializer):
    id = serializers.CharField()
    url = serializers.CharField()
    events = serializers.ListField(child=serializers.CharField())
    description = serializers.CharField(allow_blank=True)
    active = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class EndpointCreatedDoc(EndpointDoc):
    secret = serializers.CharField(help_text="the signing secret, shown this once")


class DeliveryEventDoc(serializers.Serializer):
    id = serializers.CharField()
    type = serializers.CharField()
    created = serializers.DateTimeField()


class DeliveryDoc(serializers.Serializer):
    id = serializers.IntegerField()
    event = DeliveryEventDoc()
    status = serializers.ChoiceField(choices=WebhookDelivery.State.values)
    attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    retry_until = serializers.DateTimeField(allow_null=True)
    last_status = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True, allow_null=True)
    last_attempt_at = serializers.DateTimeField(allow_null=True)
    delivered_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
