from django.contrib import admin

from billing.audit.models import AuditEntry
from billing.common.admin import ReadOnlyAdmin


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor_type", "actor_label", "action", "object_type", "object_id")
    list_filter = ("actor_type", "object_type")
    search_fields = ("actor_id", "actor_label", "action", "object_type", "object_id")
