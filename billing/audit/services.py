"""Writing the audit log. A service records its change with ``audit_record`` inside its own transaction,
so the entry and the change commit or roll back together."""

from __future__ import annotations

import json
import re
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from billing.audit.context import Actor, actor_resolve
from billing.audit.models import AuditEntry

# never copied into the log: digests of keys, signing secrets, password hashes
SECRET_FIELDS = frozenset({"key_hash", "secret", "password"})
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def object_type_of(obj: models.Model | type[models.Model]) -> str:
    """``Customer`` -> ``customer``, ``RateCardVersion`` -> ``rate_card_version``."""
    cls = obj if isinstance(obj, type) else type(obj)
    return _CAMEL.sub("_", cls.__name__).lower()


def snapshot(obj: models.Model | None, *, fields: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    """The object's stored fields as JSON (Decimals and datetimes as strings), secrets left out."""
    if obj is None:
        return None
    data = {}
    for field in obj._meta.concrete_fields:
        if field.name in SECRET_FIELDS or (fields is not None and field.name not in fields):
            continue
        data[field.attname] = getattr(obj, field.attname)
    return json_safe(data)


def json_safe(data: Any) -> Any:
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder)) if data is not None else None


def audit_record(*, action: str, obj: models.Model | None = None, object_type: str = "", object_id: Any = "",
                 before: dict[str, Any] | None = None, after: dict[str, Any] | None = None,
                 actor: str | Actor | None = None) -> AuditEntry:
    """One entry: ``obj`` names the object (or ``object_type`` and ``object_id`` do); ``before`` is None
    for a creation, ``after`` None for a deletion. ``actor`` defaults to whoever is acting (context.py)."""
    who = actor_resolve(actor)
    if obj is not None:
        object_type = object_type or object_type_of(obj)
        object_id = obj.pk if object_id == "" else object_id
    return AuditEntry.objects.create(
        actor_type=who.type, actor_id=who.id, actor_label=who.label or who.id, action=action,
        object_type=object_type, object_id="" if object_id is None else str(object_id),
        before=json_safe(before), after=json_safe(after))


def audit_created(obj: models.Model, *, action: str = "", actor: str | Actor | None = None,
                  fields: tuple[str, ...] | None = None) -> AuditEntry:
    return audit_record(action=action or f"{object_type_of(obj)}.created", obj=obj, after=snapshot(obj, fields=fields),
                        actor=actor)


def audit_changed(obj: models.Model, before: dict[str, Any] | None, *, action: str = "",
                  actor: str | Actor | None = None) -> AuditEntry:
    return audit_record(action=action or f"{object_type_of(obj)}.updated", obj=obj, before=before,
                        after=snapshot(obj), actor=actor)


def audit_deleted(obj: models.Model, before: dict[str, Any] | None, *, action: str = "",
                  actor: str | Actor | None = None) -> AuditEntry:
    return audit_record(action=action or f"{object_type_of(obj)}.deleted", obj=obj, before=before, actor=actor)
