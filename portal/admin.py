from django.contrib import admin

from portal.models import Heartbeat

admin.site.site_header = "Tollgate operator admin"


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    list_display = ("name", "seen_at")
