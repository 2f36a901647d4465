from django.contrib import admin

from billing.common.admin import ReadOnlyAdmin
from ledger.models import HeldPost, Installation, LedgerAccount, LedgerFailedTransfer, LedgerTransfer


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
