"""The console's guardrails page of one customer (staff only): its override of the plan's terms, its pauses
(the operator lifts any, an anomaly's too), budgets and stopped runs. Views parse, call one guardrails
service and redirect; a refusal re-renders the page with the service's message beside the input it names."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing.common.errors import CommonCode, DomainError
from billing.customers.models import ApiKey, Customer
from billing.customers.selectors import customer_find
from billing.customers.services import api_key_create, gateway_key_revoke
from billing.guardrails.anomalies.review import anomaly_resolve
from billing.guardrails.budgets import budget_delete
from billing.guardrails.models import Anomaly, Pause
from billing.guardrails.overrides import override_put
from billing.guardrails.pauses import pause_create, pause_lift
from billing.guardrails.runs import run_kill, run_release
from portal.console import selectors
from portal.console.override_form import OverrideForm
from portal.console.views import staff_required
from portal.dashboard import selectors as dashboard_selectors
from portal.dashboard.forms import BudgetForm, GatewayKeyForm, PauseForm, add_domain_errors
from portal.dashboard.guard_views import budget_submitted
from portal.errors import STATUS


def _customer(customer_id: str) -> Customer:
    customer = customer_find(external_id=customer_id)
    if customer is None:
        raise Http404("No such customer.")
    return customer


def _page(request: HttpRequest, customer: Customer, status: int = 200, **forms: Any) -> HttpResponse:
    """The page; ``forms`` replaces the form of that name with one bound (with its errors)."""
    data = selectors.guardrails_page(customer=customer, now=datetime.now(timezone.utc))
    context = {"customer": customer, **data, "saved": request.GET.get("saved", ""), "pause_error": "",
               "override_form": OverrideForm.from_terms(data["override"], data["meters"], data["plan"]),
               "pause_form": PauseForm(prefix="pause", initial={"scope": "customer"}),
               "budget_form": BudgetForm(prefix="budget"), "run_error": "",
               "gateway_keys": dashboard_selectors.gateway_keys(customer=customer), "gateway_key_form": GatewayKeyForm(),
               "new_gateway_key": ""}
    if "override_form" in forms:
        forms["override_form"].plan = data["plan"]
    context.update(forms)
    return render(request, "console/guardrails.html", context, status=status)


def _saved(customer: Customer, what: str) -> HttpResponse:
    return redirect(reverse("console:guardrails", args=[customer.external_id]) + f"?saved={what}")


@staff_required
def guardrails_page(request: HttpRequest, customer_id: str) -> HttpResponse:
    return _page(request, _customer(customer_id))


@staff_required
@require_POST
def override_save(request: HttpRequest, customer_id: str) -> HttpResponse:
    """Replace the customer's override with the form's (the whole of it); in force from the next event."""
    customer = _customer(customer_id)
    form = OverrideForm.from_post(request.POST, selectors.meter_choices())
    try:
        override_put(customer=customer, data=form.data(), actor=request.user.get_username())
    except DomainError as exc:
        form.add_errors(exc.fields or {"": [exc.message]})
        return _page(request, customer, status=STATUS.get(exc.code, 422), override_form=form)
    return _saved(customer, "override")


@staff_required
@require_POST
def pause_create_view(request: HttpRequest, customer_id: str) -> HttpResponse:
    customer = _customer(customer_id)
    form = PauseForm(request.POST, prefix="pause")
    if form.is_valid():
        try:
            pause_create(customer=customer, scope=form.cleaned_data["scope"], reason=form.cleaned_data["reason"],
                         project_key=form.cleaned_data["project"] or None, source=Pause.Source.OPERATOR,
                         actor=request.user.get_username())
        except DomainError as exc:
            add_domain_errors(form, exc)
        else:
            return _saved(customer, "paused")
    return _page(request, customer, status=422, pause_form=form)


@staff_required
@require_POST
def pause_lift_view(request: HttpRequest, customer_id: str, pause_id: str) -> HttpResponse:
    """The operator lifts any pause of the customer, one an anomaly made too."""
    customer = _customer(customer_id)
    try:
        pause = pause_lift(customer=customer, pause_id=pause_id, actor=request.user.get_username(), operator=True)
        # lifting an anomaly's pause here is the review's "resume": the anomaly leaves the queue too
        for anomaly in Anomaly.objects.filter(pause=pause, status=Anomaly.Status.OPEN):
            anomaly_resolve(anomaly=anomaly, resolution="resume", note="Pause lifted on the customer's guardrails page.",
                            actor=request.user.get_username(), now=datetime.now(timezone.utc))
    except DomainError as exc:
        if exc.code == CommonCode.NOT_FOUND:
            raise Http404(exc.message) from None
        return _page(request, customer, status=STATUS.get(exc.code, 422), pause_error=exc.message)
    return _saved(customer, "lifted")


@staff_required
@require_POST
def budget_create_view(request: HttpRequest, customer_id: str) -> HttpResponse:
    customer = _customer(customer_id)
    form, status = budget_submitted(request, customer)
    if status is None:
        return _saved(customer, "budget")
    return _page(request, customer, status=status, budget_form=form)


@staff_required
@require_POST
def budget_delete_view(request: HttpRequest, customer_id: str, budget_id: str) -> HttpResponse:
    customer = _customer(customer_id)
    try:
        budget_delete(customer=customer, budget_id=budget_id, actor=request.user.get_username())
    except DomainError as exc:
        if exc.code != CommonCode.NOT_FOUND:
            raise
        raise Http404(exc.message) from None
    return _saved(customer, "budget-deleted")


@staff_required
@require_POST
def run_change(request: HttpRequest, customer_id: str) -> HttpResponse:
    """Kill a run by its id, or release a stopped one (``action``: kill or release)."""
    customer = _customer(customer_id)
    run_id, action = request.POST.get("run_id", "").strip(), request.POST.get("action", "")
    if not run_id or len(run_id) > 128 or action not in ("kill", "release"):
        return _page(request, customer, status=422, run_error="A run id (at most 128 characters) and kill or release.")
    change = run_kill if action == "kill" else run_release
    try:
        change(customer=customer, run_id=run_id, actor=request.user.get_username())
    except DomainError as exc:
        return _page(request, customer, status=STATUS.get(exc.code, 422), run_error=exc.message)
    return _saved(customer, "killed" if action == "kill" else "released")


@staff_required
@require_POST
def gateway_key_create_view(request: HttpRequest, customer_id: str) -> HttpResponse:
    """A gateway key for the customer (docs/gateway.md): its secret is shown on this page once."""
    customer = _customer(customer_id)
    form = GatewayKeyForm(request.POST)
    if not form.is_valid():
        return _page(request, customer, status=422, gateway_key_form=form)
    _, raw = api_key_create(name=form.cleaned_data["name"], scope=ApiKey.Scope.GATEWAY, customer=customer)
    return _page(request, customer, new_gateway_key=raw)


@staff_required
@require_POST
def gateway_key_revoke_view(request: HttpRequest, customer_id: str, prefix: str) -> HttpResponse:
    customer = _customer(customer_id)
    if gateway_key_revoke(customer=customer, prefix=prefix) is None:
        raise Http404("No such gateway key of this customer.")
    return _saved(customer, "key-revoked")
