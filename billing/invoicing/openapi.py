"""OpenAPI descriptions of invoices and the upcoming invoice (docs/api.md, "Invoices"). Descriptions only:
the bodies are built by ``invoice_as_dict`` and ``Estimate.as_dict``."""

from __future__ import annotations

from rest_framework import serializers

from billing.common.openapi import DecimalText


class PeriodDoc(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


class PartyDoc(serializers.Serializer):
    """Who sells or who is billed, as printed (frozen when the invoice is finalized)."""

    id = serializers.CharField(required=False, help_text="the buyer's customer id")
    name = serializers.CharField(allow_blank=True)
    address = serializers.CharField(allow_blank=True)
    tax_id = serializers.CharField(allow_blank=True)
    email = serializers.CharField(allow_blank=True)


class InvoiceLineDoc(serializers.Serializer):
    position = serializers.IntegerField()
    kind = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    meter = serializers.CharField(allow_null=True)
    model = serializers.CharField(allow_null=True)
    quantity = DecimalText()
    unit_price = DecimalText(allow_null=True)
    amount = DecimalText()
    amount_minor = serializers.IntegerField()
    detail = serializers.JSONField(help_text="the tiers or packages behind the amount")


class InvoiceDoc(serializers.Serializer):
    id = serializers.IntegerField()
    number = serializers.CharField(allow_null=True, allow_blank=True)
    kind = serializers.ChoiceField(choices=["invoice", "credit_note"])
    status = serializers.ChoiceField(choices=["draft", "finalized", "paid", "void", "uncollectible"])
    customer = serializers.CharField()
    plan = serializers.CharField(allow_null=True)
    currency = serializers.CharField()
    period = PeriodDoc()
    lines = InvoiceLineDoc(many=True)
    subtotal = DecimalText()
    subtotal_minor = serializers.IntegerField()
    credits = DecimalText()
    credits_minor = serializers.IntegerField()
    tax = DecimalText()
    tax_minor = serializers.IntegerField()
    tax_rate = DecimalText(allow_null=True, help_text="percent")
    tax_note = serializers.CharField(allow_null=True)
    total = DecimalText()
    total_minor = serializers.IntegerField()
    issued_at = serializers.DateTimeField(allow_null=True)
    due_at = serializers.DateTimeField(allow_null=True)
    seller = PartyDoc()
    buyer = PartyDoc()
    versions = serializers.JSONField(help_text="the rate-card versions the invoice priced with")
    events_hash = serializers.CharField(allow_null=True)
    events_count = serializers.IntegerField()
    corrects = serializers.CharField(allow_null=True, help_text="the number of the invoice a credit note cancels")
    finalized_at = serializers.DateTimeField(allow_null=True)
    paid_at = serializers.DateTimeField(allow_null=True)
    voided_at = serializers.DateTimeField(allow_null=True)


class EstimateLineDoc(serializers.Serializer):
    kind = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    meter = serializers.CharField(allow_null=True)
    filter = serializers.DictField(allow_null=True)
    model = serializers.CharField(allow_null=True)
    quantity = DecimalText()
    amount = DecimalText()
    amount_minor = serializers.IntegerField()
    versions = serializers.JSONField()
    tier = serializers.JSONField(allow_null=True, help_text="the tier reached")
    next_tier = serializers.JSONField(allow_null=True, help_text="the next tier's threshold, if any")
    group = serializers.DictField(required=False)


class UpcomingInvoiceDoc(serializers.Serializer):
    customer = serializers.CharField()
    plan = serializers.CharField()
    currency = serializers.CharField()
    period = PeriodDoc()
    lines = EstimateLineDoc(many=True)
    subtotal = DecimalText()
    subtotal_minor = serializers.IntegerField()
    credits = DecimalText(help_text="prepaid credits the period's usage has consumed so far, applied as on the invoice")
    credits_minor = serializers.IntegerField()
    tax = DecimalText(help_text="on subtotal - credits, rounded once, as on the invoice")
    tax_minor = serializers.IntegerField()
    tax_rate = DecimalText(help_text="percent")
    tax_note = serializers.CharField(allow_null=True, help_text="the reverse-charge text, when no tax is charged for it")
    total = DecimalText(help_text="subtotal - credits + tax: what the invoice will ask for this usage")
    total_minor = serializers.IntegerField()


class VoidDoc(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True)
