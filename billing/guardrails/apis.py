from __future__ import annotations

from datetime import datetime, timezone

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.catalog.selectors import subscription_at
from billing.common.auth import principal_of
from billing.common.errors import validation_error
from billing.common.fields import decimal_to_text
from billing.customers.selectors import customer_get
from billing.guardrails import selectors, services


class CustomerBalanceApi(APIView):
    required_scope = "read"

    @extend_schema(responses={200: None}, operation_id="customer_balance")
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

    @extend_schema(request=CreditInput, responses={201: None, 200: None}, operation_id="customer_credits_grant")
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
