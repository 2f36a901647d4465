from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.common.auth import actor_of, principal_of
from billing.common.errors import CommonCode, DomainError, validation_error
from billing.common.openapi import data_list, errors
from billing.customers.selectors import customer_get
from billing.invoicing import services
from billing.invoicing.compute import upcoming_invoice
from billing.invoicing.document import PdfUnavailable, invoice_pdf, invoice_pdf_filename
from billing.invoicing.errors import InvoicingCode
from billing.invoicing.models import Invoice
from billing.invoicing.openapi import InvoiceDoc, UpcomingInvoiceDoc, VoidDoc
from billing.invoicing.selectors import invoice_as_dict, invoice_get, invoices_list


class CustomerUpcomingInvoiceApi(APIView):
    """The open period's bill so far: lines per charge with the tier reached and the next tier."""

    required_scope = "read"

    @extend_schema(responses={200: UpcomingInvoiceDoc}, operation_id="customer_upcoming_invoice")
    def get(self, request: Request, customer_id: str) -> Response:
        customer = customer_get(external_id=customer_id, principal=principal_of(request))
        estimate = upcoming_invoice(customer=customer, now=datetime.now(timezone.utc))
        if estimate is None:
            raise DomainError(InvoicingCode.NO_SUBSCRIPTION, "This customer has no plan for the current period.")
        return Response(estimate.as_dict())


class InvoicesApi(APIView):
    """Invoices and credit notes, newest period first; ``customer`` and ``status`` filter."""

    required_scope = "read"

    @extend_schema(responses={200: data_list("InvoiceList", InvoiceDoc())}, operation_id="invoices_list",
                   parameters=[OpenApiParameter("customer", str),
                               OpenApiParameter("status", str, enum=list(Invoice.Status.values))])
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        customer_pk = None
        if request.query_params.get("customer"):
            customer_pk = customer_get(external_id=request.query_params["customer"], principal=principal).pk
        status = request.query_params.get("status") or None
        if status and status not in Invoice.Status.values:
            raise validation_error({"status": [f"One of {', '.join(Invoice.Status.values)}."]})
        qs = invoices_list(principal=principal, customer_pk=customer_pk, status=status).prefetch_related("lines")
        return Response({"data": [invoice_as_dict(invoice) for invoice in qs[:500]]})


class InvoiceDetailApi(APIView):
    required_scope = "read"

    @extend_schema(responses={200: InvoiceDoc}, operation_id="invoice_get")
    def get(self, request: Request, invoice_id: str) -> Response:
        return Response(invoice_as_dict(invoice_get(pk=invoice_id, principal=principal_of(request))))


class PdfRenderer(BaseRenderer):
    """Lets a request ask for ``Accept: application/pdf``; the PDF itself is returned as it was rendered."""

    media_type = "application/pdf"
    format = "pdf"
    charset = None
    render_style = "binary"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return data if isinstance(data, bytes) else json.dumps(data).encode()


class InvoicePdfApi(APIView):
    """The invoice document as a PDF (the same one as ``/invoices/<id>.pdf``); errors stay JSON."""

    required_scope = "read"
    renderer_classes = [PdfRenderer, JSONRenderer]

    @extend_schema(responses={(200, "application/pdf"): OpenApiTypes.BINARY}, operation_id="invoice_pdf")
    def get(self, request: Request, invoice_id: str) -> HttpResponse:
        invoice = invoice_get(pk=invoice_id, principal=principal_of(request))
        try:
            pdf = invoice_pdf(invoice=invoice)
        except PdfUnavailable as exc:
            raise DomainError(CommonCode.UNAVAILABLE, "PDF rendering is not available on this server.") from exc
        response = HttpResponse(pdf, content_type="application/pdf")
        response["Content-Disposition"] = f'inline; filename="{invoice_pdf_filename(invoice)}"'
        return response

    def handle_exception(self, exc: Exception) -> Response:
        self.request.accepted_renderer, self.request.accepted_media_type = JSONRenderer(), "application/json"
        return super().handle_exception(exc)


class _InvoiceMoveApi(APIView):
    """POST moves one invoice through its lifecycle (admin); the answer is the invoice as it now is."""

    required_scope = "admin"

    def move(self, request: Request, invoice: Invoice, now: datetime, actor: str) -> None:
        raise NotImplementedError

    def post(self, request: Request, invoice_id: str) -> Response:
        principal = principal_of(request)
        invoice = invoice_get(pk=invoice_id, principal=principal)
        self.move(request, invoice, datetime.now(timezone.utc), actor_of(request))
        return Response(invoice_as_dict(invoice_get(pk=invoice.pk, principal=principal)))


@extend_schema_view(post=extend_schema(request=None, responses={200: InvoiceDoc, **errors(409)},
                                        operation_id="invoice_finalize"))
class InvoiceFinalizeApi(_InvoiceMoveApi):
    """Finalize now (the period must be closed; beat does this on its own after the grace time)."""

    def move(self, request: Request, invoice: Invoice, now: datetime, actor: str) -> None:
        services.invoice_finalize(invoice=invoice, now=now, actor=actor)


@extend_schema_view(post=extend_schema(request=VoidDoc, responses={200: InvoiceDoc, **errors(409)},
                                        operation_id="invoice_void"))
class InvoiceVoidApi(_InvoiceMoveApi):
    """Void a finalized invoice: it keeps its figures, becomes void, and a credit note cancels it."""

    def move(self, request: Request, invoice: Invoice, now: datetime, actor: str) -> None:
        reason = str(request.data.get("reason", "")) if isinstance(request.data, dict) else ""
        services.invoice_void(invoice=invoice, at=now, reason=reason, actor=actor)


@extend_schema_view(post=extend_schema(request=None, responses={200: InvoiceDoc, **errors(409)},
                                        operation_id="invoice_mark_paid"))
class InvoiceMarkPaidApi(_InvoiceMoveApi):
    """Record a payment collected outside Stripe (a bank transfer): finalized or uncollectible becomes paid.
    Stripe-collected invoices become paid through the ``invoice.paid`` webhook."""

    def move(self, request: Request, invoice: Invoice, now: datetime, actor: str) -> None:
        services.invoice_mark_paid(invoice=invoice, at=now, actor=actor)


@extend_schema_view(post=extend_schema(request=None, responses={200: InvoiceDoc, **errors(409)},
                                        operation_id="invoice_mark_uncollectible"))
class InvoiceMarkUncollectibleApi(_InvoiceMoveApi):
    """Give up collecting a finalized invoice (it can still be paid or voided later)."""

    def move(self, request: Request, invoice: Invoice, now: datetime, actor: str) -> None:
        services.invoice_mark_uncollectible(invoice=invoice, at=now, actor=actor)
