from django.contrib import admin

from billing.common.admin import ReadOnlyAdmin
from billing.usage.models import DailyRollup, DimensionSet, HourlyRollup, RollupWatermark, UsageEvent


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    """Read-only: raw events are append-only; fix mistakes with correction events."""

    list_display = ("event_id", "customer", "meter", "quantity", "timestamp", "billable", "received_at")
    list_filter = ("meter", "billable")
    search_fields = ("event_id", "customer__external_id", "run_id")
    list_select_related = ("customer", "meter")
    show_full_result_count = False


@admin.register(HourlyRollup)
class HourlyRollupAdmin(ReadOnlyAdmin):
    """Derived from raw events (manage.py rollup --full rebuilds them): never edited by hand."""

    list_display = ("customer", "meter", "hour", "total", "events", "dims_key")
    list_filter = ("meter",)
    list_select_related = ("customer", "meter")


@admin.register(DailyRollup)
class DailyRollupAdmin(ReadOnlyAdmin):
    """The hourly rollups summed per UTC day (what invoices read for whole days): derived, never edited."""

    list_display = ("customer", "meter", "day", "total", "events", "dims_key")
    list_filter = ("meter",)
    list_select_related = ("customer", "meter")


@admin.register(DimensionSet)
class DimensionSetAdmin(ReadOnlyAdmin):
    """The dimension sets behind the rollups' ``dims_key``: added by the rollup runs, never edited."""

    list_display = ("key", "dimensions")
    search_fields = ("key",)


@admin.register(RollupWatermark)
class RollupWatermarkAdmin(ReadOnlyAdmin):
    list_display = ("name", "last_event_id", "updated_at")
