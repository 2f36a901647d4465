from django.contrib import admin

from billing.payments.models import (
    MeterUsageReport,
    PlanBilling,
    StripeCustomer,
    StripeEvent,
    StripeInvoiceSync,
    StripeMeter,
)


@admin.register(PlanBilling)
class PlanBillingAdmin(admin.ModelAdmin):
    list_display = ("plan", "mode", "updated_at")


@admin.register(StripeCustomer)
class StripeCustomerAdmin(admin.ModelAdmin):
    list_display = ("customer", "stripe_customer_id", "state", "attempts", "last_error", "deleted_at")
    list_filter = ("state",)


@admin.register(StripeInvoiceSync)
class StripeInvoiceSyncAdmin(admin.ModelAdmin):
    list_display = ("invoice", "stripe_invoice_id", "state", "stripe_status", "attempts", "last_error")
    list_filter = ("state", "stripe_status")


@admin.register(StripeMeter)
class StripeMeterAdmin(admin.ModelAdmin):
    list_display = ("meter", "stripe_meter_id", "event_name")


@admin.register(MeterUsageReport)
class MeterUsageReportAdmin(admin.ModelAdmin):
    list_display = ("customer", "meter", "hour", "total", "reported_total", "revision", "state", "last_error")
    list_filter = ("state",)


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    list_display = ("event_id", "type", "status", "attempts", "error", "received_at")
    list_filter = ("status", "type")
    readonly_fields = ("event_id", "type", "created", "payload", "received_at")
