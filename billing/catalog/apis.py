from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.catalog import selectors, services
from billing.catalog.errors import CatalogCode
from billing.catalog.models import Meter, Plan, Subscription
from billing.catalog.openapi import (
    PLAN_EXAMPLE,
    VERSION_EXAMPLE,
    MeterOut,
    PlanDoc,
    PlanEntryDoc,
    SubscriptionDoc,
    VersionTermsDoc,
)
from billing.common.auth import actor_of, principal_of
from billing.common.errors import CommonCode, DomainError, validation_error
from billing.common.openapi import data_list, errors
from billing.common.sane import INSTANT_RANGE, instant_utc
from billing.customers.selectors import customer_get


class MetersApi(APIView):
    required_scope = {"GET": ("read", "ingest"), "POST": "admin"}

    class MeterCreateInput(serializers.Serializer):
        key = serializers.CharField(max_length=64)
        name = serializers.CharField(max_length=200, required=False, default="")
        unit = serializers.CharField(max_length=32, required=False, default="unit")
        aggregation = serializers.ChoiceField(choices=Meter.Aggregation.values)
        unique_by = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)

    @extend_schema(responses={200: data_list("MeterList", MeterOut())}, operation_id="meters_list")
    def get(self, request: Request) -> Response:
        return Response({"data": MeterOut(selectors.meter_list(), many=True).data})

    @extend_schema(request=MeterCreateInput, responses={201: MeterOut, 200: MeterOut, **errors(409)},
                   operation_id="meters_create", description="The same definition again answers 200 with the meter.")
    def post(self, request: Request) -> Response:
        _global_admin(request)
        data = self.MeterCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        meter, created = services.meter_create(**data.validated_data)
        return Response(MeterOut(meter).data, status=201 if created else 200)


def _global_admin(request: Request) -> None:
    """The catalog is shared by every customer: a key restricted to one customer cannot change it."""
    if principal_of(request).customer_id is not None:
        raise DomainError(CommonCode.FORBIDDEN, "A key restricted to one customer cannot change the catalog.")


class PlansApi(APIView):
    """GET the plans as catalog-file entries (one per version); POST a plan with its first version."""

    required_scope = {"GET": "read", "POST": "admin"}
    reads_raw_body = True

    @extend_schema(responses={200: data_list("PlanList", PlanEntryDoc())}, operation_id="plans_list")
    def get(self, request: Request) -> Response:
        return Response({"data": [e for plan in selectors.plan_list() for e in selectors.plan_export_entries(plan)]})

    @extend_schema(request=PlanDoc, examples=[PLAN_EXAMPLE], responses={201: PlanEntryDoc, 200: PlanEntryDoc, **errors(409)},
                   operation_id="plans_create", description="The same plan again answers 200 with its entry.")
    def post(self, request: Request) -> Response:
        _global_admin(request)
        plan, version, created = services.plan_create(data=request.body, actor=actor_of(request))
        entry = next(e for e in selectors.plan_export_entries(plan) if e["version"] == version.number)
        return Response(entry, status=201 if created else 200)


class PlanVersionsApi(APIView):
    """POST a new rate-card version of a plan (same shape as a catalog-file plan entry, without the
    plan's key/name/currency). ``effective_from`` defaults to now."""

    required_scope = "admin"

    @extend_schema(request=VersionTermsDoc, examples=[VERSION_EXAMPLE],
                   responses={201: PlanEntryDoc, 200: PlanEntryDoc, **errors(409)}, operation_id="plan_versions_create",
                   description="The same version again answers 200 with its entry.")
    def post(self, request: Request, plan_key: str) -> Response:
        _global_admin(request)
        plan = Plan.objects.filter(key=plan_key).first()
        if plan is None:
            raise DomainError(CommonCode.NOT_FOUND, "No such plan.")
        if not isinstance(request.data, dict):
            raise DomainError(CommonCode.INVALID_SHAPE, "Expected a JSON object.")
        version, created = services.plan_version_publish(plan=plan, data=dict(request.data), actor=actor_of(request))
        entry = next(e for e in selectors.plan_export_entries(plan) if e["version"] == version.number)
        return Response(entry, status=201 if created else 200)


class CustomerSubscriptionApi(APIView):
    required_scope = {"GET": "read", "POST": "admin"}

    class SubscriptionInput(serializers.Serializer):
        plan = serializers.CharField()
        start = serializers.DateTimeField(required=False, default=None)

    @extend_schema(request=SubscriptionInput, responses={201: SubscriptionDoc}, operation_id="customer_subscription_set")
    def post(self, request: Request, customer_id: str) -> Response:
        customer = customer_get(external_id=customer_id, principal=principal_of(request))
        data = self.SubscriptionInput(data=request.data)
        data.is_valid(raise_exception=True)
        plan = Plan.objects.filter(key=data.validated_data["plan"]).first()
        if plan is None:
            raise DomainError(CatalogCode.UNKNOWN_PLAN, "No such plan.", {"plan": ["Unknown plan."]})
        start = data.validated_data["start"]
        if start is not None and start.tzinfo is None:
            raise validation_error({"start": ["Needs a UTC offset."]})
        if start is not None and instant_utc(start) is None:
            raise validation_error({"start": [INSTANT_RANGE]})
        subscription = services.subscription_set(customer=customer, plan=plan, start=start,
                                                 now=datetime.now(timezone.utc), actor=actor_of(request))
        return Response(_subscription_out(subscription), status=201)

    @extend_schema(responses={200: data_list("SubscriptionList", SubscriptionDoc())}, operation_id="customer_subscription_get")
    def get(self, request: Request, customer_id: str) -> Response:
        customer = customer_get(external_id=customer_id, principal=principal_of(request))
        subscriptions = Subscription.objects.filter(customer=customer).select_related("plan")
        return Response({"data": [_subscription_out(s) for s in subscriptions]})


def _subscription_out(subscription: Subscription) -> dict[str, Any]:
    return {"plan": subscription.plan.key, "start": subscription.start,
            "end": subscription.end}
