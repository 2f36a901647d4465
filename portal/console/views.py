"""The operator's pricing console: staff only. Views parse, call one service or selector, render."""

from __future__ import annotations

from datetime import datetime, timezone
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing.audit.selectors import audit_page
from billing.catalog.diff import charge_words
from billing.catalog.drafts import draft_get
from billing.catalog.selectors import meter_list, plan_get, plan_summaries, plan_versions, version_in_effect
from billing.common.errors import DomainError
from billing.common.params import parse_instant
from billing.invoicing.selectors import invoice_get
from billing.payments.operator import stripe_invoice_sync_retry, sync_row_retry
from billing.payments.selectors import invoice_sync_list, sync_rows_unsettled, sync_summary
from portal.console.selectors import customers_listed


def staff_required(view: Any) -> Any:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            raise PermissionDenied("The pricing console is for operator staff.")
        return view(request, *args, **kwargs)

    return wrapper


@staff_required
def console_index(request: HttpRequest) -> HttpResponse:
    return render(request, "console/index.html", {"meters": list(meter_list()),
                                                  "plans": plan_summaries(now=datetime.now(timezone.utc)),
                                                  "customers": customers_listed()})


@staff_required
def plan_detail(request: HttpRequest, key: str) -> HttpResponse:
    plan = plan_get(key=key)
    current = version_in_effect(plan=plan, at=datetime.now(timezone.utc))
    versions = [(v, [(c, charge_words(c)) for c in v.rate_card.as_definition()["charges"]]) for v in plan_versions(plan=plan)]
    return render(request, "console/plan.html", {"plan": plan, "versions": versions, "current": current,
                                                 "draft": draft_get(plan=plan)})


@staff_required
def audit_trail(request: HttpRequest) -> HttpResponse:
    """The audit log filtered by actor (``user:3``, ``api_key``, ``system``), object and time, newest first."""
    query = request.GET
    kept = {k: str(v).strip() for k, v in query.items() if k != "cursor" and str(v).strip()}
    try:
        rows, next_cursor = audit_page(
            limit=50, cursor=query.get("cursor", ""), actor=kept.get("actor", ""),
            object_type=kept.get("object_type", ""), object_id=kept.get("object_id", ""),
            start=parse_instant("start", _local_instant(kept.get("start", ""))),
            end=parse_instant("end", _local_instant(kept.get("end", ""))))
    except DomainError as error:
        rows, next_cursor = [], None
        messages.error(request, "; ".join(f"{k}: {' '.join(v)}" for k, v in (error.fields or {}).items()) or error.message)
    return render(request, "console/audit.html", {"rows": rows, "next_cursor": next_cursor, "filters": kept,
                                                  "next_query": urlencode({**kept, "cursor": next_cursor or ""})})


def _local_instant(value: str) -> str:
    """A ``datetime-local`` input has no offset: the console works in UTC."""
    value = value.strip()
    return f"{value}+00:00" if value and "+" not in value and not value.endswith("Z") else value




@staff_required
def invoices(request: HttpRequest) -> HttpResponse:
    """Invoices with their Stripe sync state; failed and pending pushes can be retried."""
    state, customer = request.GET.get("state", ""), request.GET.get("customer", "").strip()
    return render(request, "console/invoices.html", {
        "rows": invoice_sync_list(state=state, customer_external_id=customer), "state": state, "customer": customer,
        "summary": sync_summary(), "unsettled": sync_rows_unsettled()})


@staff_required
@require_POST
def invoice_stripe_retry(request: HttpRequest, invoice_id: int) -> HttpResponse:
    invoice = invoice_get(pk=invoice_id, principal=None)
    row = stripe_invoice_sync_retry(invoice=invoice, actor=request.user.get_username())
    if row is None:
        messages.warning(request, f"Invoice {invoice} is not pushed to Stripe (a draft, a credit note or a metered plan).")
    else:
        messages.success(request, f"Invoice {invoice}: push to Stripe queued.")
    return redirect(reverse("console:invoices"))


@staff_required
@require_POST
def sync_row_retry_view(request: HttpRequest, kind: str, pk: int) -> HttpResponse:
    """Retry a failed or pending customer, meter hour or Paystack link now."""
    row = sync_row_retry(kind=kind, pk=pk)
    if row is None:
        messages.warning(request, f"Nothing to retry for {kind} {pk}.")
    else:
        messages.success(request, f"{row}: retry queued.")
    return redirect(reverse("console:invoices"))
