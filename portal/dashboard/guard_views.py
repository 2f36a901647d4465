"""The dashboard's guardrails: a customer user kills or releases its own agent runs, pauses all its usage or
one project and resumes it, and manages its budgets. Each view parses, calls one guardrails service and
redirects (or, on an HTMX request, renders the fragment it changed); a service's refusal is shown beside
the field it names, with its status. Who may see the customer is ``views.customer_view``'s rule."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing.common.errors import CommonCode, DomainError
from billing.customers.models import ApiKey, Customer
from billing.customers.services import api_key_create, gateway_key_revoke
from billing.guardrails.budgets import budget_create, budget_delete
from billing.guardrails.models import Pause
from billing.guardrails.pauses import pause_create, pause_lift
from billing.guardrails.runs import run_kill, run_release
from portal.dashboard import selectors
from portal.dashboard.forms import BudgetForm, GatewayKeyForm, PauseForm, add_domain_errors
from portal.dashboard.views import _is_htmx, _settings, _settings_saved, customer_view
from portal.errors import STATUS


def _not_found(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/not_found.html", status=404)


def _after_run_change(request: HttpRequest, customer: Customer, run_id: str) -> HttpResponse:
    """HTMX: the run's breaker panel again. Otherwise back where the button was: the run, or the run list."""
    if _is_htmx(request):
        guard = selectors.run_guard(customer=customer, run_id=run_id)
        return render(request, "dashboard/run.html#guard", {"customer": customer, "run_id": run_id, "guard": guard})
    if request.POST.get("back") == "usage":
        return redirect(reverse("dashboard:usage", args=[customer.external_id]) + "#stopped-runs")
    return redirect("dashboard:run", customer_id=customer.external_id, run_id=run_id)


@customer_view
@require_POST
def run_kill_view(request: HttpRequest, customer: Customer, run_id: str) -> HttpResponse:
    """The kill switch: every later event and reservation of the run is refused (``402 circuit_open``)."""
    run_kill(customer=customer, run_id=run_id, actor=request.user.get_username())
    return _after_run_change(request, customer, run_id)


@customer_view
@require_POST
def run_release_view(request: HttpRequest, customer: Customer, run_id: str) -> HttpResponse:
    """A stopped run goes on (its counters kept: a breaker still exceeded trips it again)."""
    try:
        run_release(customer=customer, run_id=run_id, actor=request.user.get_username())
    except DomainError as exc:
        if exc.code != CommonCode.NOT_FOUND:
            raise
        return _not_found(request)
    return _after_run_change(request, customer, run_id)


@customer_view
@require_POST
def pause_create_view(request: HttpRequest, customer: Customer) -> HttpResponse:
    """Pause all of the customer's usage, or one project's, from the next event on."""
    prefix = "project-pause" if "project-pause-scope" in request.POST else "pause"
    form = PauseForm(request.POST, prefix=prefix)
    if form.is_valid():
        source = Pause.Source.OPERATOR if request.user.is_staff else Pause.Source.CUSTOMER
        try:
            pause_create(customer=customer, scope=form.cleaned_data["scope"], reason=form.cleaned_data["reason"],
                         project_key=form.cleaned_data["project"] or None, source=source,
                         actor=request.user.get_username())
        except DomainError as exc:
            add_domain_errors(form, exc)
        else:
            return _settings_saved(customer, "paused")
    return _settings(request, customer, status=422,
                     **{"project_pause_form" if prefix == "project-pause" else "pause_form": form})


@customer_view
@require_POST
def pause_resume_view(request: HttpRequest, customer: Customer, pause_id: str) -> HttpResponse:
    """Lift one of the customer's pauses; one an anomaly made is the operator's to lift (403, said so)."""
    try:
        pause_lift(customer=customer, pause_id=pause_id, actor=request.user.get_username(), operator=False)
    except DomainError as exc:
        if exc.code == CommonCode.NOT_FOUND:
            return _not_found(request)
        return _settings(request, customer, status=STATUS.get(exc.code, 422), pause_error=exc.message)
    return _settings_saved(customer, "resumed")


def budget_submitted(request: HttpRequest, customer: Customer) -> tuple[BudgetForm, int | None]:
    """Create the budget the posted form describes: the bound form, and the status to answer it with
    again when it was not made (None: made). The dashboard and the console both submit budgets this way."""
    form = BudgetForm(request.POST, prefix="budget")
    if not form.is_valid():
        return form, 422
    try:
        budget_create(customer=customer, actor=request.user.get_username(), **form.service_kwargs())
    except DomainError as exc:  # by field, from the one set of rules the API answers with too
        add_domain_errors(form, exc, BudgetForm.FIELDS, fallback="budget_id")
        return form, STATUS.get(exc.code, 422)
    return form, None


@customer_view
@require_POST
def budget_create_view(request: HttpRequest, customer: Customer) -> HttpResponse:
    form, status = budget_submitted(request, customer)
    if status is None:
        return _settings_saved(customer, "budget")
    return _settings(request, customer, status=status, budget_form=form)


@customer_view
@require_POST
def budget_delete_view(request: HttpRequest, customer: Customer, budget_id: str) -> HttpResponse:
    try:
        budget_delete(customer=customer, budget_id=budget_id, actor=request.user.get_username())
    except DomainError as exc:
        if exc.code != CommonCode.NOT_FOUND:
            raise
        return _not_found(request)
    return _settings_saved(customer, "budget-deleted")


@customer_view
@require_POST
def gateway_key_create_view(request: HttpRequest, customer: Customer) -> HttpResponse:
    """A gateway key for one of the customer's apps (docs/gateway.md): its secret is shown on this page once."""
    form = GatewayKeyForm(request.POST)
    if not form.is_valid():
        return _settings(request, customer, status=422, gateway_key_form=form)
    _, raw = api_key_create(name=form.cleaned_data["name"], scope=ApiKey.Scope.GATEWAY, customer=customer)
    return _settings(request, customer, new_gateway_key=raw)


@customer_view
@require_POST
def gateway_key_revoke_view(request: HttpRequest, customer: Customer, prefix: str) -> HttpResponse:
    if gateway_key_revoke(customer=customer, prefix=prefix) is None:
        return _not_found(request)
    return _settings_saved(customer, "key-revoked")
