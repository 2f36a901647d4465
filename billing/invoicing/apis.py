from __future__ import annotations

from datetime import datetime, timezone

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.common.auth import principal_of
from billing.common.errors import ApiError
from billing.customers.selectors import customer_get
from billing.invoicing.estimate import upcoming_invoice


class CustomerUpcomingInvoiceApi(APIView):
    """The open period's bill so far: lines per charge with the tier reached and the next tier."""

    required_scope = "read"

    @extend_schema(responses={200: None}, operation_id="customer_upcoming_invoice")
    def get(self, request: Request, customer_id: str) -> Response:
        customer = customer_get(external_id=customer_id, principal=principal_of(request))
        estimate = upcoming_invoice(customer=customer, now=datetime.now(timezone.utc))
        if estimate is None:
            raise ApiError(404, "no_subscription", "This customer has no plan for the current period.")
        return Response(estimate.as_dict())
