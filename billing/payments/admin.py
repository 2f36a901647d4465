from django.contrib import admin

from billing.audit.admin import AuditedAdmin
from billing.payments.models import (
    MeterUsageReport,
    PaystackCustomer,
    PaystackEvent,
    PaystackPayment,
    PlanBilling,
    StripeCustomer,
    StripeEvent,
    StripeInvoiceSync,
    StripeMeter,
)


@admin.register(PlanBilling)
class PlanBillingAdmin(AuditedAdmin):
    list_display = ("plan", "mode", "updated_at")


@admin.register(StripeCustomer)
class StripeCustomerAdmin(AuditedAdmin):
    list_display = ("customer", "stripe_customer_id", "state", "attempts", "last_error", "deleted_at")
    list_filter = ("state",)


@admin.register(StripeInvoiceSync)
class StripeInvoiceSyncAdmin(AuditedAdmin):
    list_display = ("invoice", "stripe_invoice_id", "state", "stripe_status", "attempts", "last_error")
    list_filter = ("state", "stripe_status")


@admin.register(StripeMeter)
class StripeMeterAdmin(AuditedAdmin):
    list_display = ("meter", "stripe_meter_id", "event_name")


@admin.register(MeterUsageReport)
class MeterUsageReportAdmin(AuditedAdmin):
    list_display = ("customer", "meter", "hour", "total", "reported_total", "revision", "state", "last_error")
    list_filter = ("state",)


@admin.register(StripeEvent)
class StripeEventAdmin(AuditedAdmin):
    list_display = ("event_id", "type", "status", "attempts", "error", "received_at")
    list_filter = ("status", "type")
    readonly_fields = ("event_id", "type", "created", "payload", "received_at")


@admin.register(PaystackCustomer)
class PaystackCustomerAdmin(AuditedAdmin):
    list_display = ("customer", "customer_code", "email", "card", "card_at")
    readonly_fields = ("customer_code", "authorization_code", "card", "card_at")


@admin.register(PaystackPayment)
class PaystackPaymentAdmin(AuditedAdmin):
    list_display = ("invoice", "reference", "state", "attempts", "last_error", "paid_at")
    list_filter = ("state",)


@admin.register(PaystackEvent)
class PaystackEventAdmin(AuditedAdmin):
    list_display = ("event_key", "type", "status", "attempts", "received_at", "processed_at")
    list_filter = ("status", "type")
