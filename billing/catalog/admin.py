from datetime import datetime, timezone
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from billing.audit.admin import AuditedAdmin
from billing.catalog.models import Meter, Plan, RateCardDraft, RateCardVersion, Subscription
from billing.catalog.services import meter_frozen_fields
from billing.common.admin import ReadOnlyAdmin


@admin.register(Meter)
class MeterAdmin(AuditedAdmin):
    """A meter with events keeps its aggregation, unit and unique_by (the database refuses them too)."""

    list_display = ("key", "name", "unit", "aggregation", "unique_by")
    search_fields = ("key", "name")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return meter_frozen_fields(meter=obj) if obj is not None else ()


@admin.register(Plan)
class PlanAdmin(AuditedAdmin):
    list_display = ("key", "name", "currency", "interval", "created_at")
    readonly_fields = ("key", "currency")


@admin.register(RateCardVersion)
class RateCardVersionAdmin(ReadOnlyAdmin):
    list_display = ("plan", "number", "effective_from", "created_by", "created_at")
    list_filter = ("plan",)


@admin.register(RateCardDraft)
class RateCardDraftAdmin(ReadOnlyAdmin):
    """Drafts are edited, published and discarded in the console's editor (each audited there)."""

    list_display = ("plan", "updated_by", "updated_at")


class SubscriptionForm(forms.ModelForm):
    class Meta:
        model = Subscription
        fields = ("customer", "plan", "start", "end")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        now = datetime.now(timezone.utc)
        for name in ("start", "end"):
            value = data.get(name)
            if name in self.changed_data and value is not None and value < now:
                self.add_error(name, "Cannot be in the past: a subscription's history is not rewritten.")
        return data


@admin.register(Subscription)
class SubscriptionAdmin(AuditedAdmin):
    """A subscription's past is history: once started its customer, plan and start are fixed, an end
    already passed is fixed, and it cannot be deleted; a change is a new subscription."""

    list_display = ("customer", "plan", "start", "end")
    list_filter = ("plan",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        now = datetime.now(timezone.utc)
        if obj is None or obj.start > now:
            return ()
        return ("customer", "plan", "start", "end") if obj.end is not None and obj.end <= now else ("customer", "plan", "start")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is not None and obj.start > datetime.now(timezone.utc)

    form = SubscriptionForm
