"""The operator's pricing console: staff only. Views parse, call one service or selector, render."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_POST

from billing.audit.selectors import audit_page
from billing.catalog import ratecard, schema
from billing.catalog.models import Plan
from billing.catalog.selectors import (
    meter_keys,
    meter_list,
    plan_get,
    plan_summaries,
    plan_versions,
    version_in_effect,
)
from billing.catalog.services import plan_version_publish
from billing.common.errors import DomainError
from billing.common.params import parse_instant
from billing.invoicing.selectors import draft_comparison, invoice_get
from billing.payments.operator import stripe_invoice_sync_retry, sync_row_retry
from billing.payments.selectors import invoice_sync_list, sync_rows_unsettled, sync_summary
from portal.console.forms import add_tier, definition_from_form, remove_tier
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
    return render(request, "console/plan.html", {"plan": plan, "versions": plan_versions(plan=plan), "current": current})


def _problems(plan: Plan, definition: dict[str, Any], effective_from: str | None = None) -> list[tuple[str, str]]:
    payload = {"key": plan.key, "name": plan.name, "currency": plan.currency, "interval": plan.interval,
               "effective_from": effective_from or datetime.now(timezone.utc).isoformat(), **definition}
    try:
        entry = schema.parse_plan(payload)
    except schema.CatalogError as exc:
        return exc.problems
    problems: list[tuple[str, str]] = []
    schema.validate_plan(entry, "", meter_keys(), problems)
    return [(path.lstrip("."), message) for path, message in problems]


def _editor(request: HttpRequest, plan: Plan, definition: dict[str, Any], problems: list[tuple[str, str]],
            template: str = "console/editor.html", status: int = 200, effective_from: str = "") -> HttpResponse:
    return render(request, template, {
        "plan": plan, "definition": definition, "problems": problems, "problem_paths": {p for p, _ in problems},
        "meters": meter_list(), "models": ("per_unit", "graduated", "volume", "package", "flat_overage"),
        "effective_from": effective_from or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M"),
    }, status=status)


@staff_required
def version_editor(request: HttpRequest, key: str) -> HttpResponse:
    """GET: a draft prefilled from the version in effect. POST: publish it with an effective date."""
    plan = plan_get(key=key)
    if request.method != "POST":
        current = version_in_effect(plan=plan, at=datetime.now(timezone.utc)) or plan.versions.order_by("-number").first()
        definition = current.rate_card.as_definition() if current else {"base_fee": "0", "charges": [], "limits": []}
        return _editor(request, plan, definition, [])
    definition = definition_from_form(request.POST)
    raw_when = request.POST.get("effective_from", "")
    when = parse_datetime(raw_when)
    if when is None:
        return _editor(request, plan, definition, [("effective_from", "a date and time (UTC) is required")], status=422,
                       effective_from=raw_when)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)  # the form's datetime-local is UTC
    try:
        version, _ = plan_version_publish(plan=plan, data={"effective_from": when.isoformat(), **definition},
                                          actor=request.user.get_username())
    except schema.CatalogError as exc:
        return _editor(request, plan, definition, [(p.lstrip("."), m) for p, m in exc.problems], status=422,
                       effective_from=raw_when)
    return redirect(reverse("console:plan", args=[plan.key]) + f"#v{version.number}")


@staff_required
def editor_tiers(request: HttpRequest, key: str) -> HttpResponse:
    """HTMX: add or remove a tier row; answers the form partial (no page reload)."""
    plan = plan_get(key=key)
    definition = definition_from_form(request.POST)
    action = request.POST.get("tier_action", "")
    parts = action.split(":")
    try:
        if parts[0] == "add":
            definition = add_tier(definition, int(parts[1]))
        elif parts[0] == "remove":
            definition = remove_tier(definition, int(parts[1]), int(parts[2]))
    except (IndexError, ValueError):
        pass
    return _editor(request, plan, definition, [], template="console/editor.html#form",
                   effective_from=request.POST.get("effective_from", ""))


@staff_required
def editor_validate(request: HttpRequest, key: str) -> HttpResponse:
    """HTMX: live validation of the draft; each problem named by its path."""
    plan = plan_get(key=key)
    problems = _problems(plan, definition_from_form(request.POST))
    return render(request, "console/editor.html#problems", {"problems": problems})


@staff_required
def editor_simulate(request: HttpRequest, key: str) -> HttpResponse:
    """HTMX: the current period priced for the ten largest subscribers, current version next to the draft
    (nothing is saved)."""
    plan = plan_get(key=key)
    definition = definition_from_form(request.POST)
    problems = _problems(plan, definition)
    if problems:
        return render(request, "console/editor.html#problems", {"problems": problems})
    entry = schema.parse_plan({"key": plan.key, "name": plan.name, "currency": plan.currency,
                               "effective_from": datetime.now(timezone.utc).isoformat(), **definition})
    card = ratecard.parse(schema.validate_plan(entry, "", meter_keys(), []))
    rows = draft_comparison(plan=plan, card=card, now=datetime.now(timezone.utc))
    total = sum((r["difference"] for r in rows[:10]), Decimal(0))
    return render(request, "console/editor.html#simulation",
                  {"rows": rows[:10], "plan": plan, "total_difference": total})


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
