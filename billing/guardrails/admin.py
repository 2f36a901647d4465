
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from billing.audit.admin import AuditedAdmin
from billing.common.admin import ReadOnlyAdmin
from billing.common.errors import DomainError
from billing.guardrails.alerts import alert_threshold_validate
from billing.guardrails.models import (
    Alert,
    AlertThreshold,
    Anomaly,
    Budget,
    CreditGrant,
    CustomerOverride,
    Pause,
    Reservation,
    Run,
    SpendSample,
    SpendWatch,
)


@admin.register(CreditGrant)
class CreditGrantAdmin(AuditedAdmin):
    """Grants are made through the API or services (they write the ledger too); read-only here."""

    list_display = ("customer", "amount", "currency", "idempotency_key", "reason", "created_at")
    readonly_fields = ("customer", "amount", "currency", "idempotency_key", "reason", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Reservation)
class ReservationAdmin(AuditedAdmin):
    list_display = ("reservation_id", "customer", "meter", "quantity", "state", "expires_at")
    list_filter = ("state",)
    readonly_fields = ("customer", "reservation_id", "meter", "quantity", "dimensions", "ttl_seconds", "expires_at",
                       "state", "legs", "created_at", "closed_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class AlertThresholdForm(forms.ModelForm):
    class Meta:
        model = AlertThreshold
        fields = ["plan", "customer", "target", "percent"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:  # the same rules as the API
            data["target"], data["percent"] = alert_threshold_validate(target=data.get("target") or "",
                                                                       percent=data.get("percent") or Decimal(0))
        except DomainError as exc:
            raise ValidationError("; ".join(m for ms in (exc.fields or {}).values() for m in ms)) from None
        return data


@admin.register(AlertThreshold)
class AlertThresholdAdmin(AuditedAdmin):
    """Operators set plan-level thresholds here (they replace the 80% default of their target); customers'
    own thresholds come from the API and the dashboard."""

    form = AlertThresholdForm
    list_display = ("target", "percent", "plan", "customer", "created_at")
    list_filter = ("plan",)
    search_fields = ("target", "customer__external_id", "plan__key")
    raw_id_fields = ("customer",)


@admin.register(Alert)
class AlertAdmin(AuditedAdmin):
    """Alerts are recorded by the alert check; read-only. An alert whose delivery is ``unknown`` is never
    retried on its own (at most once): the action sends it again when the operator is sure it was lost."""

    list_display = ("customer", "period_start", "target", "percent", "used", "limit", "state", "sent_at", "attempts")
    list_filter = ("state", "period_start")
    search_fields = ("customer__external_id",)
    readonly_fields = ("customer", "period_start", "period_end", "target", "percent", "limit", "used", "unit",
                       "crossed_at", "state", "attempts", "claimed_at", "sent_at", "recipients", "error")
    actions = ["send_again"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Send again (only alerts whose delivery is unknown)")
    def send_again(self, request: HttpRequest, queryset: Any) -> None:
        count = queryset.filter(state=Alert.State.UNKNOWN).update(state=Alert.State.PENDING)
        self.message_user(request, f"{count} alert(s) will be sent by the next check (within 5 minutes).")


class ReadOnlyGuard(ReadOnlyAdmin):
    """Overrides, pauses, runs, budgets and anomalies are written through the API and the console, which bump the
    customer's guard revision so ingest rereads them at once; an edit here would not, so they are read-only."""


@admin.register(CustomerOverride)
class CustomerOverrideAdmin(ReadOnlyGuard):
    list_display = ("customer", "revision", "updated_at")
    search_fields = ("customer__external_id",)


@admin.register(Pause)
class PauseAdmin(ReadOnlyGuard):
    list_display = ("pause_id", "customer", "scope", "project", "source", "reason", "created_at", "lifted_at")
    list_filter = ("source", "scope")
    search_fields = ("customer__external_id", "pause_id")


@admin.register(Run)
class RunAdmin(ReadOnlyGuard):
    list_display = ("run_id", "customer", "state", "breaker", "started_at", "changed_at")
    list_filter = ("state",)
    search_fields = ("customer__external_id", "run_id")


@admin.register(Budget)
class BudgetAdmin(ReadOnlyGuard):
    list_display = ("budget_id", "customer", "amount", "period", "action", "soft_percent", "created_at")
    list_filter = ("action", "period")
    search_fields = ("customer__external_id", "budget_id")


@admin.register(Anomaly)
class AnomalyAdmin(ReadOnlyGuard):
    """Anomalies are opened by the sampler and resolved in the console's review queue or the API (resolving one
    may lift its pause): read-only here."""

    list_display = ("public_id", "customer", "currency", "status", "opened_at", "window_spend", "baseline_rate",
                    "action", "resolution", "resolved_by")
    list_filter = ("status", "resolution", "action")
    search_fields = ("customer__external_id", "public_id")


@admin.register(SpendWatch)
class SpendWatchAdmin(ReadOnlyGuard):
    list_display = ("customer", "currency", "started_at", "sampled_at", "spent")
    search_fields = ("customer__external_id",)


@admin.register(SpendSample)
class SpendSampleAdmin(ReadOnlyGuard):
    list_display = ("customer", "currency", "at", "spent")
    search_fields = ("customer__external_id",)
