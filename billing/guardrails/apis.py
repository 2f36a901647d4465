from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.catalog.errors import CatalogCode
from billing.catalog.models import Meter
from billing.catalog.selectors import subscription_at
from billing.common.auth import actor_of, principal_of
from billing.common.calendar import period_bounds
from billing.common.errors import CommonCode, DomainError, validation_error
from billing.common.fields import check_decimal, decimal_to_text
from billing.common.openapi import data_list, errors
from billing.common.sane import instant_utc
from billing.customers.errors import CustomersCode
from billing.customers.models import Customer, Project
from billing.customers.selectors import customer_get
from billing.guardrails import accounts as acc
from billing.guardrails import alerts, budgets, overrides, pauses, reservations, runs, selectors, services
from billing.guardrails.models import Alert, Pause, Reservation
from billing.guardrails.openapi import (
    BUDGET_EXAMPLE,
    AlertsDoc,
    BalanceDoc,
    BudgetDoc,
    CreditGrantDoc,
    OverrideDoc,
    OverrideInDoc,
    PauseDoc,
    ReservationDoc,
    RunDoc,
    ThresholdCreatedDoc,
    ThresholdDoc,
)


class CustomerBalanceApi(APIView):
    required_scope = "read"

    @extend_schema(responses={200: BalanceDoc}, operation_id="customer_balance")
    def get(self, request: Request, customer_id: str) -> Response:
        customer = customer_get(external_id=customer_id, principal=principal_of(request))
        return Response(selectors.customer_balance(customer=customer, now=datetime.now(timezone.utc)))


class CustomerCreditsApi(APIView):
    required_scope = "admin"

    class CreditInput(serializers.Serializer):
        amount = serializers.DecimalField(max_digits=38, decimal_places=12)
        idempotency_key = serializers.CharField(max_length=128)
        reason = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
        currency = serializers.CharField(max_length=3, required=False)

    @extend_schema(request=CreditInput, responses={201: CreditGrantDoc, 200: CreditGrantDoc, **errors(409)},
                   operation_id="customer_credits_grant",
                   description="The same idempotency_key with the same grant again answers 200 (`status: duplicate`).")
    def post(self, request: Request, customer_id: str) -> Response:
        customer = customer_get(external_id=customer_id, principal=principal_of(request))
        data = self.CreditInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        currency = v.get("currency")
        if not currency:
            subscription = subscription_at(customer=customer, at=datetime.now(timezone.utc))
            if subscription is None:
                raise validation_error({"currency": ["Required: the customer has no plan to take it from."]})
            currency = subscription.plan.currency
        grant, created = services.credits_grant(customer=customer, amount=v["amount"], currency=currency,
                                                idempotency_key=v["idempotency_key"], reason=v["reason"])
        return Response({"customer": customer.external_id, "amount": decimal_to_text(grant.amount),
                         "currency": grant.currency, "idempotency_key": grant.idempotency_key, "reason": grant.reason,
                         "status": "created" if created else "duplicate"}, status=201 if created else 200)


def _origin(customer: Customer, v: dict[str, Any], principal: Any) -> reservations.Origin:
    """The reservation's run (``trace.run_id``), project and key: what pauses, breakers and budgets look at."""
    run_id = v["trace"].get("run_id") or ""
    if not isinstance(run_id, str) or len(run_id) > 128:
        raise validation_error({"trace.run_id": ["A string of at most 128 characters."]})
    project_pk = None
    if v.get("project"):
        project_pk = Project.objects.filter(customer=customer, key=v["project"]).values_list("pk", flat=True).first()
        if project_pk is None:
            raise DomainError(CustomersCode.UNKNOWN_PROJECT, "No such project of this customer.",
                              {"project": ["Unknown project."]})
    return reservations.Origin(run_id, project_pk, principal.api_key_id)


def reservation_out(reservation: Reservation) -> dict[str, Any]:
    return {
        "reservation_id": reservation.reservation_id, "customer": reservation.customer.external_id,
        "meter": reservation.meter.key, "quantity": decimal_to_text(reservation.quantity),
        "status": reservation.state, "expires_at": reservation.expires_at,
        "held": {leg: decimal_to_text(acc.units_to_qty(int(hold["amount"])) if leg == "quota"
                                      else acc.units_to_money(int(hold["amount"])))
                 for leg, hold in reservation.legs.items()},
    }


def reservation_for(request: Request, reservation_id: str, customer_id: str | None) -> Reservation:
    principal = principal_of(request)
    qs = Reservation.objects.select_related("customer", "meter").filter(reservation_id=reservation_id)
    if principal.customer_id is not None:
        qs = qs.filter(customer_id=principal.customer_id)
    if customer_id:
        qs = qs.filter(customer__external_id=customer_id)
    found = list(qs[:2])
    if not found:
        raise DomainError(CommonCode.NOT_FOUND, "No such reservation.")
    if len(found) > 1:
        raise validation_error({"customer": ["Several customers use this reservation_id: name the customer."]})
    return found[0]


class ReservationsApi(APIView):
    required_scope = "ingest"

    class ReservationInput(serializers.Serializer):
        reservation_id = serializers.CharField(max_length=128)
        customer = serializers.CharField(max_length=128)
        meter = serializers.CharField(max_length=64)
        quantity = serializers.DecimalField(max_digits=38, decimal_places=18)
        ttl_seconds = serializers.IntegerField(min_value=1, max_value=reservations.MAX_TTL)
        dimensions = serializers.DictField(child=serializers.CharField(max_length=256), required=False, default=dict)
        project = serializers.CharField(max_length=64, required=False)
        trace = serializers.DictField(required=False, default=dict)

    @extend_schema(request=ReservationInput, responses={201: ReservationDoc, 200: ReservationDoc, **errors(402, 409)},
                   operation_id="reservations_create",
                   description="The same reservation_id with the same body again answers 200 with the reservation.")
    def post(self, request: Request) -> Response:
        data = self.ReservationInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        principal = principal_of(request)
        customer = Customer.objects.filter(external_id=v["customer"]).first()
        if principal.customer_id is not None and (customer is None or customer.pk != principal.customer_id):
            raise DomainError(CustomersCode.CUSTOMER_FORBIDDEN, "This key is restricted to another customer.")
        if customer is None:
            raise DomainError(CustomersCode.UNKNOWN_CUSTOMER, "No such customer.", {"customer": ["Unknown customer."]})
        meter = Meter.objects.filter(key=v["meter"]).first()
        if meter is None:
            raise DomainError(CatalogCode.UNKNOWN_METER, "No such meter.", {"meter": ["Unknown meter."]})
        reservation, created = reservations.reservation_create(
            customer=customer, reservation_id=v["reservation_id"], meter=meter, quantity=v["quantity"],
            dimensions=v["dimensions"], ttl_seconds=v["ttl_seconds"], origin=_origin(customer, v, principal))
        return Response(reservation_out(reservation), status=201 if created else 200)


class ReleaseInput(serializers.Serializer):
    customer = serializers.CharField(required=False, help_text="needed only when several customers use the id")


class ReservationReleaseApi(APIView):
    required_scope = "ingest"

    @extend_schema(request=ReleaseInput, responses={200: ReservationDoc, **errors(409)}, operation_id="reservations_release")
    def post(self, request: Request, reservation_id: str) -> Response:
        customer_id = request.data.get("customer") if isinstance(request.data, dict) else None
        reservation = reservation_for(request, reservation_id, customer_id)
        return Response(reservation_out(reservations.reservation_release(reservation=reservation)))


# --- soft-limit alerts ---------------------------------------------------------------------------------

def _alert_out(alert: Alert) -> dict[str, Any]:
    return {"target": alert.target, "percent": decimal_to_text(alert.percent), "limit": decimal_to_text(alert.limit),
            "used": decimal_to_text(alert.used), "unit": alert.unit, "crossed_at": alert.crossed_at,
            "status": alert.state, "sent_at": alert.sent_at}


class CustomerAlertsApi(APIView):
    """The alerts of one period (default: the open one), oldest first."""

    required_scope = "read"

    @extend_schema(parameters=[OpenApiParameter("period", str, description="YYYY-MM (UTC); default: the open period")],
                   responses={200: AlertsDoc}, operation_id="customer_alerts_list")
    def get(self, request: Request, customer_id: str) -> Response:
        customer = customer_get(external_id=customer_id, principal=principal_of(request))
        at = datetime.now(timezone.utc)
        period = request.query_params.get("period")
        if period:
            try:
                at = datetime.strptime(period, "%Y-%m").replace(tzinfo=timezone.utc)
            except ValueError:
                raise validation_error({"period": ["Use YYYY-MM."]}) from None
            if instant_utc(at) is None:
                raise validation_error({"period": ["Use YYYY-MM from 2000-01 to 2099-12."]})
        start, end = period_bounds(at)
        rows = selectors.alerts_list(customer=customer, period_start=start)
        return Response({"customer": customer.external_id, "period_start": start, "period_end": end,
                         "data": [_alert_out(a) for a in rows]})


class CustomerAlertThresholdsApi(APIView):
    """The effective thresholds (GET), a customer's own threshold added (POST) or removed (DELETE). The
    customer's own users and customer-restricted read keys may change them (self-service)."""

    required_scope = {"GET": "read", "POST": "read", "DELETE": "read"}

    class ThresholdInput(serializers.Serializer):
        target = serializers.CharField(max_length=80)
        percent = serializers.DecimalField(max_digits=7, decimal_places=4)

    @extend_schema(responses={200: data_list("ThresholdList", ThresholdDoc(), customer=serializers.CharField())},
                   operation_id="customer_alert_thresholds_list")
    def get(self, request: Request, customer_id: str) -> Response:
        customer = customer_get(external_id=customer_id, principal=principal_of(request))
        effective = selectors.alert_thresholds_effective(customer=customer, now=datetime.now(timezone.utc))
        return Response({"customer": customer.external_id, "data": [t.as_dict() for t in effective]})

    @extend_schema(request=ThresholdInput, responses={201: ThresholdCreatedDoc, 200: ThresholdCreatedDoc},
                   operation_id="customer_alert_thresholds_create")
    def post(self, request: Request, customer_id: str) -> Response:
        customer = _customer(request, customer_id, change=True)
        data = self.ThresholdInput(data=request.data)
        data.is_valid(raise_exception=True)
        threshold, created = alerts.alert_threshold_create(customer=customer, target=data.validated_data["target"],
                                                           percent=data.validated_data["percent"])
        return Response({"id": threshold.pk, "target": threshold.target, "percent": decimal_to_text(threshold.percent),
                         "source": "customer", "status": "created" if created else "exists"},
                        status=201 if created else 200)

    @extend_schema(parameters=[OpenApiParameter("id", int), OpenApiParameter("target", str), OpenApiParameter("percent", str)],
                   responses={204: None}, operation_id="customer_alert_thresholds_delete")
    def delete(self, request: Request, customer_id: str) -> Response:
        customer = _customer(request, customer_id, change=True)
        params = request.query_params
        threshold_id = percent = None
        try:
            threshold_id = int(params["id"]) if params.get("id") else None
            percent = Decimal(params["percent"]) if params.get("percent") else None
        except (ValueError, InvalidOperation):
            raise validation_error({"id" if "id" in params else "percent": ["Not a number."]}) from None
        if threshold_id is not None and not 0 < threshold_id < 2**63:  # a bigint, or PostgreSQL refuses the query
            raise validation_error({"id": ["Not a threshold id."]})
        if percent is not None and check_decimal(percent):
            raise validation_error({"percent": [f"Percent {check_decimal(percent)}."]})
        alerts.alert_threshold_delete(customer=customer, threshold_id=threshold_id, target=params.get("target"),
                                      percent=percent)
        return Response(status=204)


# --- Guardrails (contract: "Guardrails"): customer overrides, pauses, agent runs and budgets. Overrides are
# the operator's (admin). Pauses, runs (kill, release) and budgets are also the customer's own to manage: a
# dashboard user of the customer, or a key restricted to it with the ``read`` scope; an anomaly's pause is
# lifted only by the operator.

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

    @extend_schema(responses={200: OverrideDoc}, operation_id="customer_overrides_get")
    def get(self, request: Request, customer_id: str) -> Response:
        return Response(overrides.override_get(customer=_customer(request, customer_id)))

    @extend_schema(request=OverrideInDoc, responses={200: OverrideDoc}, operation_id="customer_overrides_put")
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

    @extend_schema(responses={200: data_list("PauseList", PauseDoc(), customer=serializers.CharField())},
                   operation_id="customer_pauses_list")
    def get(self, request: Request, customer_id: str) -> Response:
        customer = _customer(request, customer_id)
        active = Pause.objects.select_related("customer", "project").filter(customer=customer, lifted_at__isnull=True)
        return Response({"customer": customer.external_id,
                         "data": [pauses.pause_as_dict(p) for p in active.order_by("created_at")]})

    @extend_schema(request=PauseInput, responses={201: PauseDoc}, operation_id="customer_pauses_create")
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

    @extend_schema(responses={200: PauseDoc}, operation_id="customer_pause_lift")
    def delete(self, request: Request, customer_id: str, pause_id: str) -> Response:
        customer = _customer(request, customer_id, change=True)
        pause = pauses.pause_lift(customer=customer, pause_id=pause_id, actor=actor_of(request),
                                  operator=principal_of(request).has_scope("admin"))
        return Response(pauses.pause_as_dict(pause))


class CustomerRunApi(APIView):
    required_scope = "read"

    @extend_schema(responses={200: RunDoc}, operation_id="customer_run_get")
    def get(self, request: Request, customer_id: str, run_id: str) -> Response:
        return Response(runs.run_detail(customer=_customer(request, customer_id), run_id=run_id))


class CustomerRunActionApi(APIView):
    """``POST .../runs/{run_id}/kill`` (the kill switch) and ``.../release`` (back to open, counters kept);
    the route names the action."""

    required_scope = "read"
    ACTIONS = {"kill": runs.run_kill, "release": runs.run_release}

    @extend_schema(request=None, responses={200: RunDoc})
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

    @extend_schema(responses={200: data_list("BudgetList", BudgetDoc(), customer=serializers.CharField())},
                   operation_id="customer_budgets_list")
    def get(self, request: Request, customer_id: str) -> Response:
        customer = _customer(request, customer_id)
        return Response({"customer": customer.external_id,
                         "data": selectors.budget_figures(customer=customer, now=datetime.now(timezone.utc))})

    @extend_schema(request=BudgetInput, examples=[BUDGET_EXAMPLE], responses={201: BudgetDoc, 200: BudgetDoc, **errors(409)},
                   operation_id="customer_budgets_create")
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
