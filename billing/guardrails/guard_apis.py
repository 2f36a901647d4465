"""The guardrails' API (contract: "Guardrails"): customer overrides, pauses, agent runs and budgets.

Who may do what: overrides are the operator's (admin). Pauses, runs (kill, release) and budgets are also
the customer's own to manage: a dashboard user of the customer, or a key restricted to it with the
``read`` scope; an anomaly's pause is lifted only by the operator.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.common.auth import actor_of, principal_of
from billing.common.errors import CommonCode, DomainError
from billing.customers.models import Customer
from billing.customers.selectors import customer_get
from billing.guardrails import budgets, overrides, pauses, runs, selectors
from billing.guardrails.models import Pause

SELF_SERVICE = {"GET": "read", "POST": "read", "DELETE": "read"}


def _customer(request: Request, customer_id: str, *, change: bool = False) -> Customer:
    """The customer (404 for another tenant's); for a change, the caller must be the operator or the
    customer itself (a customer-restricted key or user)."""
    principal = principal_of(request)
    customer = customer_get(external_id=customer_id, principal=principal)
    if change and not principal.has_scope("admin") and principal.customer_id is None:
        raise DomainError(CommonCode.FORBIDDEN, "Only an admin key, or a key or user of this customer, may change this.")
    return customer


class CustomerOverridesApi(APIView):
    """PUT replaces the customer's override of its plan's terms (the whole of it); GET reads it."""

    required_scope = {"GET": "read", "PUT": "admin"}

    @extend_schema(responses={200: None}, operation_id="customer_overrides_get")
    def get(self, request: Request, customer_id: str) -> Response:
        return Response(overrides.override_get(customer=_customer(request, customer_id)))

    @extend_schema(request=None, responses={200: None}, operation_id="customer_overrides_put")
    def put(self, request: Request, customer_id: str) -> Response:
        customer = _customer(request, customer_id)
        overrides.override_put(customer=customer, data=request.data, actor=actor_of(request))
        return Response(overrides.override_get(customer=customer))


class CustomerPausesApi(APIView):
    required_scope = SELF_SERVICE

    class PauseInput(serializers.Serializer):
        scope = serializers.ChoiceField(choices=Pause.Scope.values)
        project = serializers.CharField(max_length=64, required=False)
        reason = serializers.CharField(max_length=200)

    @extend_schema(responses={200: None}, operation_id="customer_pauses_list")
    def get(self, request: Request, customer_id: str) -> Response:
        customer = _customer(request, customer_id)
        active = Pause.objects.select_related("customer", "project").filter(customer=customer, lifted_at__isnull=True)
        return Response({"customer": customer.external_id,
                         "data": [pauses.pause_as_dict(p) for p in active.order_by("created_at")]})

    @extend_schema(request=PauseInput, responses={201: None}, operation_id="customer_pauses_create")
    def post(self, request: Request, customer_id: str) -> Response:
        customer = _customer(request, customer_id, change=True)
        data = self.PauseInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        principal = principal_of(request)
        source = Pause.Source.OPERATOR if principal.has_scope("admin") else Pause.Source.CUSTOMER
        pause = pauses.pause_create(customer=customer, scope=v["scope"], project_key=v.get("project"),
                                    reason=v["reason"], source=source, actor=actor_of(request))
        return Response(pauses.pause_as_dict(pause), status=201)


class CustomerPauseDetailApi(APIView):
    required_scope = SELF_SERVICE

    @extend_schema(responses={200: None}, operation_id="customer_pause_lift")
    def delete(self, request: Request, customer_id: str, pause_id: str) -> Response:
        customer = _customer(request, customer_id, change=True)
        pause = pauses.pause_lift(customer=customer, pause_id=pause_id, actor=actor_of(request),
                                  operator=principal_of(request).has_scope("admin"))
        return Response(pauses.pause_as_dict(pause))


class CustomerRunApi(APIView):
    required_scope = "read"

    @extend_schema(responses={200: None}, operation_id="customer_run_get")
    def get(self, request: Request, customer_id: str, run_id: str) -> Response:
        return Response(runs.run_detail(customer=_customer(request, customer_id), run_id=run_id))


class CustomerRunActionApi(APIView):
    """``POST .../runs/{run_id}/kill`` (the kill switch) and ``.../release`` (back to open, counters kept);
    the route names the action."""

    required_scope = "read"
    ACTIONS = {"kill": runs.run_kill, "release": runs.run_release}

    @extend_schema(request=None, responses={200: None})
    def post(self, request: Request, customer_id: str, run_id: str, action: str) -> Response:
        customer = _customer(request, customer_id, change=True)
        self.ACTIONS[action](customer=customer, run_id=run_id, actor=actor_of(request))
        return Response(runs.run_detail(customer=customer, run_id=run_id))


class CustomerBudgetsApi(APIView):
    required_scope = SELF_SERVICE

    class BudgetInput(serializers.Serializer):
        budget_id = serializers.CharField(max_length=128, allow_blank=True)
        scope = serializers.JSONField(required=False, default=dict)
        amount = serializers.JSONField()
        period = serializers.CharField(max_length=8, required=False, default="month")
        action = serializers.CharField(max_length=8, required=False, default="block")
        soft = serializers.JSONField(required=False, default=None)

    @extend_schema(responses={200: None}, operation_id="customer_budgets_list")
    def get(self, request: Request, customer_id: str) -> Response:
        customer = _customer(request, customer_id)
        return Response({"customer": customer.external_id,
                         "data": selectors.budget_figures(customer=customer, now=datetime.now(timezone.utc))})

    @extend_schema(request=BudgetInput, responses={201: None, 200: None}, operation_id="customer_budgets_create")
    def post(self, request: Request, customer_id: str) -> Response:
        customer = _customer(request, customer_id, change=True)
        data = self.BudgetInput(data=request.data)
        data.is_valid(raise_exception=True)
        v: dict[str, Any] = data.validated_data
        budget, created = budgets.budget_create(customer=customer, budget_id=v["budget_id"], scope=v["scope"],
                                                amount=v["amount"], period=v["period"], action=v["action"],
                                                soft=v["soft"], actor=actor_of(request))
        figures = {b["budget_id"]: b for b in selectors.budget_figures(customer=customer, now=datetime.now(timezone.utc))}
        return Response(figures.get(budget.budget_id, selectors.budget_as_dict(budget)), status=201 if created else 200)


class CustomerBudgetDetailApi(APIView):
    required_scope = SELF_SERVICE

    @extend_schema(responses={204: None}, operation_id="customer_budget_delete")
    def delete(self, request: Request, customer_id: str, budget_id: str) -> Response:
        budgets.budget_delete(customer=_customer(request, customer_id, change=True), budget_id=budget_id,
                              actor=actor_of(request))
        return Response(status=204)
