from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from billing.common.admin import ReadOnlyAdmin
from billing.invoicing.models import Invoice, InvoiceLine, InvoiceSequence, PeriodClose


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = ("position", "kind", "description", "quantity", "unit_price", "amount_minor")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    """Written only by billing.invoicing.services (finalize, void, credit notes): never edited by hand."""

    list_display = ("number", "kind", "customer", "period_start", "status", "total_minor", "currency")
    list_filter = ("status", "kind", "period_start")
    search_fields = ("number", "customer__external_id")
    list_select_related = ("customer",)
    inlines = [InvoiceLineInline]


@admin.register(PeriodClose)
class PeriodCloseAdmin(ReadOnlyAdmin):
    list_display = ("period_start", "period_end", "closed_at")


@admin.register(InvoiceSequence)
class InvoiceSequenceAdmin(ReadOnlyAdmin):
    list_display = ("name", "prefix", "last")
