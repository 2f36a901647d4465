from django.contrib import admin

from billing.common.admin import ReadOnlyAdmin
from billing.usage.models import UsageEvent


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    """Read-only: raw events are append-only; fix mistakes with correction events."""

    list_display = ("event_id", "customer", "meter", "quantity", "timestamp", "billable", "received_at")
    list_filter = ("meter", "billable")
    search_fields = ("event_id", "customer__external_id", "run_id")
    list_select_related = ("customer", "meter")
    show_full_result_count = False
