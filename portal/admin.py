from django.contrib import admin

from billing.audit.admin import AuditedAdmin
from portal.models import Heartbeat

admin.site.site_header = "Tollgate operator admin"


@admin.register(Heartbeat)
class HeartbeatAdmin(AuditedAdmin):
    list_display = ("name", "seen_at")
