from django.contrib import admin

from billing.catalog.models import Meter


@admin.register(Meter)
class MeterAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "unit", "aggregation", "unique_by")
    search_fields = ("key", "name")
