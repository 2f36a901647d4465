from django.contrib import admin, messages
from django.http import HttpRequest

from billing.audit.admin import AuditedAdmin
from billing.audit.services import audit_changed, snapshot
from billing.customers.models import ApiKey, Customer, CustomerUser, Project
from billing.customers.services import api_key_create, api_key_revoke


class ProjectInline(admin.TabularInline):
    model = Project
    extra = 0


@admin.register(Customer)
class CustomerAdmin(AuditedAdmin):
    list_display = ("external_id", "name", "email", "created_at")
    search_fields = ("external_id", "name", "email")
    inlines = [ProjectInline]

    def get_readonly_fields(self, request: HttpRequest, obj: Customer | None = None) -> tuple[str, ...]:
        return ("external_id",) if obj is not None else ()  # the external id is immutable


@admin.register(Project)
class ProjectAdmin(AuditedAdmin):
    list_display = ("key", "customer", "name")
    list_filter = ("customer",)


@admin.register(CustomerUser)
class CustomerUserAdmin(AuditedAdmin):
    list_display = ("user", "customer", "created_at")


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin):
    """Keys are created here with their secret shown once in a message; never stored in clear."""

    list_display = ("name", "prefix", "scope", "customer", "created_at", "last_used_at", "revoked_at")
    list_filter = ("scope", "revoked_at")
    fields = ("name", "scope", "customer", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: object, change: bool) -> None:
        if change:  # only the name can change
            before = snapshot(ApiKey.objects.get(pk=obj.pk))
            obj.save(update_fields=["name"])
            audit_changed(ApiKey.objects.get(pk=obj.pk), before)
            return
        key, raw = api_key_create(name=obj.name, scope=obj.scope, customer=obj.customer)
        obj.pk, obj.prefix = key.pk, key.prefix
        messages.warning(request, f"API key (shown once, copy it now): {raw}")

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: object) -> None:
        for key in queryset:  # type: ignore[attr-defined]
            api_key_revoke(key=key)
