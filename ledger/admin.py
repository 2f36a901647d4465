from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from ledger.models import LedgerAccount, LedgerFailedTransfer, LedgerTransfer


class LedgerReadOnly(admin.ModelAdmin):
    """The SQL ledger's state: written only by the ledger backend, never edited by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(LedgerAccount)
class LedgerAccountAdmin(LedgerReadOnly):
    list_display = ("id", "ledger", "code", "flags", "debits_posted", "credits_posted", "debits_pending", "credits_pending")
    list_filter = ("ledger", "code")


@admin.register(LedgerTransfer)
class LedgerTransferAdmin(LedgerReadOnly):
    list_display = ("id", "debit_account_id", "credit_account_id", "amount", "ledger", "code", "state", "timestamp")
    list_filter = ("code", "state")


@admin.register(LedgerFailedTransfer)
class LedgerFailedTransferAdmin(LedgerReadOnly):
    list_display = ("id", "status")
