"""The anomalies API (contract: "Anomalies"; docs/api.md, "Anomalies"): the review queue's list and
resolving one. Scope ``admin``; a key restricted to a customer sees that customer's only and may not
resolve (lifting an anomaly's pause is the operator's act)."""

from __future__ import annotations

from datetime import datetime, timezone

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.common.auth import actor_of, principal_of
from billing.common.errors import CommonCode, DomainError, validation_error
from billing.common.openapi import data_list, errors
from billing.customers.selectors import customer_get
from billing.guardrails.anomalies import selectors
from billing.guardrails.anomalies.openapi import AnomalyDoc
from billing.guardrails.anomalies.review import NOTE_MAX, anomaly_resolve
from billing.guardrails.models import Anomaly

LIST_MAX = 1000


class AnomaliesApi(APIView):
    required_scope = "admin"

    @extend_schema(responses={200: data_list("AnomalyList", AnomalyDoc())}, operation_id="anomalies_list",
                   parameters=[OpenApiParameter("status", str, enum=["open", "resolved"]),
                               OpenApiParameter("customer", str), OpenApiParameter("limit", int)],
                   description="Anomalies, newest first (open ones first when no status is given).")
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        status = request.query_params.get("status") or None
        if status is not None and status not in Anomaly.Status.values:
            raise validation_error({"status": ["One of 'open', 'resolved'."]})
        try:
            limit = int(request.query_params.get("limit") or 100)
        except ValueError:
            limit = 0
        if not 1 <= limit <= LIST_MAX:
            raise validation_error({"limit": [f"An integer from 1 to {LIST_MAX}."]})
        external_id = request.query_params.get("customer")
        customer = customer_get(external_id=external_id, principal=principal) if external_id else None
        rows = selectors.anomalies_list(status=status, customer=customer)
        if principal.customer_id is not None:
            rows = rows.filter(customer_id=principal.customer_id)
        return Response({"data": [selectors.anomaly_as_dict(a) for a in rows[:limit]]})


class AnomalyResolveApi(APIView):
    required_scope = "admin"

    class ResolveInput(serializers.Serializer):
        resolution = serializers.ChoiceField(choices=Anomaly.Resolution.values)
        note = serializers.CharField(max_length=NOTE_MAX, required=False, default="", allow_blank=True)

    @extend_schema(request=ResolveInput, responses={200: AnomalyDoc, **errors(409)}, operation_id="anomaly_resolve",
                   description="`resume` lifts the pause the anomaly made; `keep_paused` leaves it.")
    def post(self, request: Request, anomaly_id: str) -> Response:
        principal = principal_of(request)
        anomaly = selectors.anomaly_get(public_id=anomaly_id, customer_pk=principal.customer_id)
        if principal.customer_id is not None:
            raise DomainError(CommonCode.FORBIDDEN, "Resolving an anomaly is the operator's: use an unrestricted key.")
        data = self.ResolveInput(data=request.data)
        data.is_valid(raise_exception=True)
        anomaly = anomaly_resolve(anomaly=anomaly, resolution=data.validated_data["resolution"],
                                  note=data.validated_data["note"], actor=actor_of(request),
                                  now=datetime.now(timezone.utc))
        return Response(selectors.anomaly_as_dict(anomaly))
