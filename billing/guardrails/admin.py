
from django.contrib import admin
from django.http import HttpRequest

from billing.guardrails.models import CreditGrant, Reservation


@admin.register(CreditGrant)
class CreditGrantAdmin(admin.ModelAdmin):
    """Grants are made through the API or services (they write the ledger too); read-only here."""

    list_display = ("customer", "amount", "currency", "idempotency_key", "reason", "created_at")
    readonly_fields = ("customer", "amount", "currency", "idempotency_key", "reason", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    list_display = ("reservation_id", "customer", "meter", "quantity", "state", "expires_at")
    list_filter = ("state",)
    readonly_fields = ("customer", "reservation_id", "meter", "quantity", "dimensions", "ttl_seconds", "expires_at",
                       "state", "legs", "created_at", "closed_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
