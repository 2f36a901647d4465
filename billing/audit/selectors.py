"""Reading the audit log: newest first, filtered by actor, object and time, a page at a time."""

from __future__ import annotations

import base64
from datetime import datetime

from django.db.models import QuerySet

from billing.audit.models import AuditEntry
from billing.common.errors import validation_error


def cursor_encode(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{last_id}".encode()).decode().rstrip("=")


def cursor_decode(cursor: str) -> int:
    try:
        kind, value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split(":", 1)
        if kind == "audit":
            return int(value)
    except (ValueError, UnicodeDecodeError):
        pass
    raise validation_error({"cursor": ["Invalid cursor."]})


def audit_entries(*, actor: str = "", object_type: str = "", object_id: str = "", start: datetime | None = None,
                  end: datetime | None = None, before_id: int | None = None) -> QuerySet[AuditEntry]:
    """``actor`` is ``type`` (every user, key or job) or ``type:id``; ``[start, end)`` is half-open."""
    entries = AuditEntry.objects.order_by("-id")
    if actor:
        kind, _, ident = actor.partition(":")
        if kind not in AuditEntry.ActorType.values:
            raise validation_error({"actor": [f"Must be one of {', '.join(AuditEntry.ActorType.values)}, "
                                              "optionally followed by ':<id>'."]})
        entries = entries.filter(actor_type=kind, **({"actor_id": ident} if ident else {}))
    if object_type:
        entries = entries.filter(object_type=object_type)
    if object_id:
        entries = entries.filter(object_id=object_id)
    if start is not None:
        entries = entries.filter(at__gte=start)
    if end is not None:
        entries = entries.filter(at__lt=end)
    if before_id is not None:
        entries = entries.filter(id__lt=before_id)
    return entries


def audit_page(*, limit: int, cursor: str = "", **filters: object) -> tuple[list[AuditEntry], str | None]:
    """One page and the cursor of the next (None on the last)."""
    before_id = cursor_decode(cursor) if cursor else None
    rows = list(audit_entries(before_id=before_id, **filters)[: limit + 1])  # type: ignore[arg-type]
    next_cursor = cursor_encode(rows[limit - 1].pk) if len(rows) > limit else None
    return rows[:limit], next_cursor
