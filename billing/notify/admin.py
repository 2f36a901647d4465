from django.contrib import admin

from billing.notify.models import WebhookDelivery, WebhookEndpoint, WebhookEvent


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ("public_id", "url", "active", "created_at", "deleted_at")
    exclude = ("secret",)


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin):
    list_display = ("public_id", "type", "key", "created")
    list_filter = ("type",)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("event", "endpoint", "state", "attempts", "last_status", "next_attempt_at", "delivered_at")
    list_filter = ("state",)
