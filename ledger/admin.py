"""The ledger's tables in the admin: inspected, never edited (only the backend writes them). The read-only
admin lives here, at the bottom layer; billing.common.admin re-exports it for the apps."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from ledger.models import HeldPost, Installation, LedgerAccount, LedgerFailedTransfer, LedgerTransfer


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(LedgerAccount)
class LedgerAccountAdmin(ReadOnlyAdmin):
    list_display = ("id", "ledger", "code", "flags", "debits_posted", "credits_posted", "debits_pending", "credits_pending")
    list_filter = ("ledger", "code")


@admin.register(LedgerTransfer)
class LedgerTransferAdmin(ReadOnlyAdmin):
    list_display = ("id", "debit_account_id", "credit_account_id", "amount", "ledger", "code", "state", "timestamp")
    list_filter = ("code", "state")


@admin.register(LedgerFailedTransfer)
class LedgerFailedTransferAdmin(ReadOnlyAdmin):
    list_display = ("id", "status")


@admin.register(Installation)
class InstallationAdmin(ReadOnlyAdmin):
    list_display = ("namespace", "created_at")


@admin.register(HeldPost)
class HeldPostAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at")
