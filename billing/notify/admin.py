"""Read-mostly admin: endpoints are created through the API (the secret is shown there, once)."""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from billing.audit.admin import AuditedAdmin
from billing.notify.invoice_emails import invoice_emails_resend
from billing.notify.models import InvoiceEmail, WebhookDelivery, WebhookEndpoint, WebhookEvent
from billing.notify.services import delivery_resend


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(AuditedAdmin):
    list_display = ("public_id", "url", "active", "created_at", "deleted_at")
    exclude = ("secret",)
    readonly_fields = ("public_id", "url", "events", "created_at", "deleted_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(WebhookEvent)
class WebhookEventAdmin(AuditedAdmin):
    list_display = ("public_id", "type", "key", "created")
    list_filter = ("type",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(AuditedAdmin):
    list_display = ("event", "endpoint", "state", "attempts", "last_status", "next_attempt_at", "delivered_at")
    list_filter = ("state",)
    actions = ["resend"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Send again (the same event id)")
    def resend(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        for delivery in queryset.filter(endpoint__deleted_at__isnull=True):
            delivery_resend(delivery=delivery)
        messages.info(request, "Queued again; deliveries of deleted endpoints were left alone.")


@admin.register(InvoiceEmail)
class InvoiceEmailAdmin(AuditedAdmin):
    list_display = ("invoice", "state", "recipients", "attempts", "sent_at", "error")
    list_filter = ("state",)
    actions = ["send_again"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Send again (only emails known not to have arrived: unknown, failed)")
    def send_again(self, request: HttpRequest, queryset: QuerySet[InvoiceEmail]) -> None:
        count = invoice_emails_resend(rows=queryset)
        messages.info(request, f"{count} invoice email(s) queued again; sent ones were left alone.")
