from django.contrib import admin

from billing.catalog.models import Meter, Plan, RateCardVersion, Subscription
from billing.common.admin import ReadOnlyAdmin


@admin.register(Meter)
class MeterAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "unit", "aggregation", "unique_by")
    search_fields = ("key", "name")


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "currency", "interval", "created_at")
    readonly_fields = ("key", "currency")


@admin.register(RateCardVersion)
class RateCardVersionAdmin(ReadOnlyAdmin):
    list_display = ("plan", "number", "effective_from", "created_by", "created_at")
    list_filter = ("plan",)


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ("customer", "plan", "start", "end")
    list_filter = ("plan",)
