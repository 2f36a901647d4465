"""The invoice document: an HTML page (and its printable form, ``?print=1``) a finance team can send.
Operator staff see every invoice; a customer user only their own customer's (another's is a 404)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from billing.catalog import money
from billing.customers.models import CustomerUser
from billing.invoicing.models import Invoice
from billing.payments.selectors import payment_links, plans_billed_by_stripe


@login_required
def invoice_document(request: HttpRequest, invoice_id: int) -> HttpResponse:
    invoice = Invoice.objects.select_related("customer", "plan", "corrects").filter(pk=invoice_id).first()
    if invoice is None:
        raise Http404("No such invoice.")
    if not request.user.is_staff:
        link = CustomerUser.objects.filter(user__pk=request.user.pk or 0).first()
        if link is None or link.customer_id != invoice.customer_id:
            raise Http404("No such invoice.")
    currency = invoice.currency

    def major(minor: int) -> str:
        return str(money.from_minor(minor, currency))

    billed_by_stripe = (invoice.status == Invoice.Status.FINALIZED
                        and invoice.plan_id in plans_billed_by_stripe(plan_ids=[invoice.plan_id]))
    lines = [{"line": line, "amount": major(line.amount_minor)} for line in invoice.lines.order_by("position")]
    return render(request, "invoices/document.html", {
        "invoice": invoice, "lines": lines, "seller": settings.TOLLGATE_SELLER, "printable": "print" in request.GET,
        "subtotal": major(invoice.subtotal_minor), "credits": major(invoice.credits_minor),
        "total": major(invoice.total_minor), "credit_notes": invoice.credit_notes.order_by("pk"),
        "billed_by_stripe": billed_by_stripe, "pay_url": payment_links(invoices=[invoice]).get(invoice.pk, ""),
    })
