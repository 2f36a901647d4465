"""The Django admin writes the audit log too: ``AuditedAdmin`` records every save and delete made through
it (inline rows included) with the signed-in operator as the actor, in the admin's own transaction."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.db import models, transaction
from django.http import HttpRequest

from billing.audit.context import actor_of_request
from billing.audit.models import AuditEntry
from billing.audit.services import audit_record, object_type_of, snapshot
from billing.common.admin import ReadOnlyAdmin


def _stored(obj: models.Model) -> dict[str, Any] | None:
    return snapshot(type(obj)._default_manager.filter(pk=obj.pk).first()) if obj.pk is not None else None


class AuditedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose saves and deletes are audited as ``<object_type>.created|updated|deleted``."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        with transaction.atomic():
            before = _stored(obj) if change else None
            super().save_model(request, obj, form, change)
            _record(request, obj, "updated" if change else "created", before, snapshot(obj))

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            pk, before = obj.pk, snapshot(obj)
            super().delete_model(request, obj)
            _record(request, obj, "deleted", before, None, pk=pk)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        with transaction.atomic():
            rows = [(obj, obj.pk, snapshot(obj)) for obj in queryset]
            super().delete_queryset(request, queryset)
            for obj, pk, before in rows:
                _record(request, obj, "deleted", before, None, pk=pk)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        with transaction.atomic():
            befores = {id(f.instance): (f.instance.pk, _stored(f.instance)) for f in formset.forms}
            super().save_formset(request, form, formset, change)
            for obj in formset.new_objects:
                _record(request, obj, "created", None, snapshot(obj))
            for obj, _ in formset.changed_objects:
                _record(request, obj, "updated", befores.get(id(obj), (None, None))[1], snapshot(obj))
            for obj in formset.deleted_objects:
                pk, before = befores.get(id(obj), (obj.pk, None))
                _record(request, obj, "deleted", before, None, pk=pk)


def _record(request: HttpRequest, obj: models.Model, verb: str, before: dict[str, Any] | None,
            after: dict[str, Any] | None, *, pk: Any = None) -> None:
    kind = object_type_of(obj)
    audit_record(action=f"{kind}.{verb}", object_type=kind, object_id=obj.pk if pk is None else pk, before=before,
                 after=after, actor=actor_of_request(request))


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor_type", "actor_label", "action", "object_type", "object_id")
    list_filter = ("actor_type", "object_type")
    search_fields = ("actor_id", "actor_label", "action", "object_type", "object_id")


class AuditedUserAdmin(AuditedAdmin, UserAdmin):
    """Operators and dashboard logins, audited like the rest (the password hash never is)."""


class AuditedGroupAdmin(AuditedAdmin, GroupAdmin):
    pass


for _model, _admin in ((get_user_model(), AuditedUserAdmin), (Group, AuditedGroupAdmin)):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
    admin.site.register(_model, _admin)
