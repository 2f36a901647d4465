from __future__ import annotations

from datetime import timezone
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.audit.models import AuditEntry
from billing.audit.selectors import audit_page
from billing.common.auth import principal_of
from billing.common.errors import CommonCode, DomainError
from billing.common.params import parse_instant, parse_int

FILTERS = ("actor", "object_type", "object_id", "start", "end", "cursor")


class ActorDoc(serializers.Serializer):
    type = serializers.ChoiceField(choices=["user", "api_key", "system"])
    id = serializers.CharField(allow_null=True)


class AuditEntryDoc(serializers.Serializer):
    id = serializers.IntegerField()
    at = serializers.DateTimeField()
    actor = ActorDoc()
    action = serializers.CharField()
    object_type = serializers.CharField()
    object_id = serializers.CharField(allow_null=True)
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)


class AuditPageDoc(serializers.Serializer):
    data = AuditEntryDoc(many=True)  # type: ignore[assignment]  # the response key is "data"
    next_cursor = serializers.CharField(allow_null=True)


def entry_out(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.pk,
        "at": entry.at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "actor": {"type": entry.actor_type, "id": entry.actor_id or None},
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id or None,
        "before": entry.before,
        "after": entry.after,
    }


class AuditLogApi(APIView):
    """GET the audit log, newest first (scope admin, unrestricted: the log holds every customer's changes, so a
    key or login restricted to one customer may not read it)."""

    required_scope = "admin"

    @extend_schema(
        parameters=[*(OpenApiParameter(p, str) for p in FILTERS), OpenApiParameter("limit", int)],
        responses={200: AuditPageDoc},
        operation_id="audit_log_list",
    )
    def get(self, request: Request) -> Response:
        if principal_of(request).customer_id is not None:
            raise DomainError(CommonCode.FORBIDDEN, "The audit log is the operator's: it holds every customer's "
                              "changes, and this key or login is restricted to one customer.")
        params = request.query_params
        rows, next_cursor = audit_page(
            limit=parse_int("limit", params.get("limit"), 100, 1, 1000), cursor=params.get("cursor", ""),
            actor=params.get("actor", ""), object_type=params.get("object_type", ""),
            object_id=params.get("object_id", ""), start=parse_instant("start", params.get("start")),
            end=parse_instant("end", params.get("end")))
        return Response({"data": [entry_out(e) for e in rows], "next_cursor": next_cursor})
