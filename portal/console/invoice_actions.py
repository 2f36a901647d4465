"""The operator's invoice actions on the console's invoices page (staff only): prepare the drafts of ended
periods, finalize a draft, void with a credit note, mark paid out of band. Each calls one invoicing service
(which writes its audit entry) and goes back to the list with what happened."""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import urlencode

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing.common.errors import DomainError
from billing.invoicing.prepare import invoices_prepare
from billing.invoicing.selectors import invoice_get
from billing.invoicing.services import invoice_finalize, invoice_mark_paid, invoice_void
from portal.console.views import staff_required


def _back(request: HttpRequest) -> HttpResponse:
    customer = request.POST.get("customer", "").strip()
    query = f"?{urlencode({'customer': customer})}" if customer else ""
    return redirect(reverse("console:invoices") + query)


@staff_required
@require_POST
def invoices_prepare_view(request: HttpRequest) -> HttpResponse:
    drafts = invoices_prepare(now=datetime.now(timezone.utc), actor=request.user.get_username())
    messages.success(request, f"Ended periods closed; {len(drafts)} draft(s) to review and finalize."
                     if drafts else "Ended periods closed; no draft waits to be finalized.")
    return _back(request)


@staff_required
@require_POST
def invoice_action(request: HttpRequest, invoice_id: int, action: str) -> HttpResponse:
    """``finalize`` a draft, ``void`` a finalized invoice (a credit note cancels it), ``mark-paid``."""
    invoice = invoice_get(pk=invoice_id, principal=None)
    now, actor = datetime.now(timezone.utc), request.user.get_username()
    try:
        if action == "finalize":
            invoice = invoice_finalize(invoice=invoice, now=now, actor=actor)
            messages.success(request, f"Invoice {invoice.number} finalized.")
        elif action == "void":
            invoice = invoice_void(invoice=invoice, at=now, reason=request.POST.get("reason", "").strip()[:200],
                                   actor=actor)
            messages.success(request, f"Invoice {invoice.number} voided; a credit note cancels it.")
        elif action == "mark-paid":
            invoice = invoice_mark_paid(invoice=invoice, at=now, actor=actor)
            messages.success(request, f"Invoice {invoice.number} marked paid.")
        else:
            messages.error(request, f"Unknown action {action}.")
    except DomainError as exc:
        messages.error(request, f"Invoice {invoice.number or invoice.pk}: {exc.message}")
    return _back(request)
