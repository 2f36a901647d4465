"""The invoice document: an HTML page (its printable form, ``?print=1``) and the same document as a PDF
rendered on the server (``/invoices/<id>.pdf``). Operator staff see every invoice; a customer user only
their own customer's (another's is a 404)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string

from billing.customers.models import CustomerUser
from billing.invoicing.document import PdfUnavailable, document_context, invoice_pdf, invoice_pdf_filename
from billing.invoicing.models import Invoice
from billing.payments.selectors import payment_links, plans_billed_by_stripe


def _visible(request: HttpRequest, invoice_id: int) -> Invoice:
    invoice = Invoice.objects.select_related("customer", "plan", "corrects").filter(pk=invoice_id).first()
    if invoice is None:
        raise Http404("No such invoice.")
    if not request.user.is_staff:
        link = CustomerUser.objects.filter(user__pk=request.user.pk or 0).first()
        if link is None or link.customer_id != invoice.customer_id:
            raise Http404("No such invoice.")
    return invoice


def _context(invoice: Invoice) -> dict[str, object]:
    billed_by_stripe = (invoice.status == Invoice.Status.FINALIZED
                        and invoice.plan_id in plans_billed_by_stripe(plan_ids=[invoice.plan_id]))
    return {**document_context(invoice=invoice), "credit_notes": invoice.credit_notes.order_by("pk"),
            "billed_by_stripe": billed_by_stripe}


def invoice_stylesheet(request: HttpRequest) -> HttpResponse:
    """The document's rules as a stylesheet of its own: the page links it (the Content-Security-Policy allows
    no inline style), the PDF inlines the same file for WeasyPrint."""
    return HttpResponse(render_to_string("invoices/invoice.css"), content_type="text/css; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=3600"})


@login_required
def invoice_document(request: HttpRequest, invoice_id: int) -> HttpResponse:
    invoice = _visible(request, invoice_id)
    return render(request, "invoices/document.html", {
        **_context(invoice), "printable": "print" in request.GET,
        "pay_url": payment_links(invoices=[invoice]).get(invoice.pk, ""),
    })


@login_required
def invoice_document_pdf(request: HttpRequest, invoice_id: int) -> HttpResponse:
    invoice = _visible(request, invoice_id)
    try:
        pdf = invoice_pdf(invoice=invoice, context=_context(invoice))
    except PdfUnavailable:
        return HttpResponse("PDF rendering is not available on this server (WeasyPrint needs Pango).",
                            status=503, content_type="text/plain")
    response = HttpResponse(pdf, content_type="application/pdf")
    response["Content-Disposition"] = f'inline; filename="{invoice_pdf_filename(invoice)}"'
    return response
