"""The customer's self-serve dashboard. Views parse, call one selector or service, render; on an HTMX
request they render just the page's fragment (django-template-partials), which the page polls.

Who sees what: a customer user sees only their own customer; operator staff may open any customer at
``/dashboard/<external_id>/``. Any other id (another tenant's or an unknown one) is the same 404 on
every dashboard URL, so a customer user cannot even learn whether the other customer exists.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django_htmx.http import HttpResponseClientRedirect

from billing.common.errors import CommonCode, DomainError
from billing.customers.models import Customer
from billing.customers.selectors import customer_find, customer_user_customer_pk, customers_by_external_id
from billing.guardrails.alerts import alert_threshold_create, alert_threshold_delete
from billing.invoicing.lines import Estimate
from billing.payments.checkout import payment_method_setup_start
from billing.payments.gateway import GatewayError
from billing.payments.selectors import payment_method_state
from portal.dashboard import charts, selectors
from portal.dashboard.forms import (
    BudgetForm,
    ContactEmailForm,
    GatewayKeyForm,
    PauseForm,
    ThresholdAddForm,
    UserAddForm,
)
from portal.dashboard.services import dashboard_user_add, invoice_contact_set

BREAKDOWNS = ("project", "model", "provider", "direction", "region", "agent_id")


def _customer_for(request: HttpRequest, customer_id: str) -> Customer | None:
    customer = customer_find(external_id=customer_id)
    if customer is None or request.user.is_staff:
        return customer
    if request.user.pk is None:
        return None
    own = customer_user_customer_pk(user_id=request.user.pk)
    return customer if own == customer.pk else None


def customer_view(view: Any) -> Any:
    """Login required; resolves ``customer_id`` to a Customer the user may see, else 404."""

    @wraps(view)
    def wrapper(request: HttpRequest, customer_id: str, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            if _is_htmx(request):  # a poll after the session ended: send the whole page to the login
                return HttpResponseClientRedirect(redirect_to_login(request.headers.get("HX-Current-URL") or
                                                                    request.get_full_path()).url)
            return redirect_to_login(request.get_full_path())
        customer = _customer_for(request, customer_id)
        if customer is None:
            return render(request, "dashboard/not_found.html", status=404)
        return view(request, customer, *args, **kwargs)

    return wrapper


def _is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"  # what django-htmx's request.htmx reads


def _now() -> datetime:
    return datetime.now(timezone.utc)


def dashboard_home(request: HttpRequest) -> HttpResponse:
    """A customer user lands on their customer; staff pick one."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if request.user.is_staff:
        return render(request, "dashboard/home.html", {"customers": customers_by_external_id()})
    own = customer_user_customer_pk(user_id=int(request.user.pk))
    if own is None:
        raise PermissionDenied("This login is not linked to a customer.")
    customer = customer_find(pk=own)
    if customer is None:
        raise PermissionDenied("This login is not linked to a customer.")
    return redirect("dashboard:overview", customer_id=customer.external_id)


def _glance_context(customer: Customer, now: datetime, estimate: Estimate | None) -> dict[str, Any]:
    return {"customer": customer, "glance": selectors.glance(customer=customer, now=now, estimate=estimate),
            "alerts": selectors.alerts_shown(customer=customer, now=now),
            "pauses": selectors.pauses_active(customer=customer)}


def _charts_context(customer: Customer, now: datetime, estimate: Estimate | None) -> dict[str, Any]:
    estimate_costs = selectors.attributed_costs(estimate=estimate)
    usage = []
    for series in selectors.usage_series(customer=customer, now=now):
        meter = series["meter"]
        usage.append({
            "meter": meter,
            "hourly": charts.time_bars(f"hourly-{meter.key}", f"{meter.name}, last {selectors.HOURS_SHOWN} hours",
                                       meter.unit, series["hourly"], "%d %Hh", 12),
            "daily": charts.time_bars(f"daily-{meter.key}", f"{meter.name}, this period by day", meter.unit,
                                      series["daily"], "%d", 2),
        })
    cost_charts = []
    for by, title in (("model", "Cost by model"), ("project", "Cost by project")):
        slices = selectors.breakdown(customer=customer, now=now, by=by, costs=estimate_costs)
        cost_charts.append(charts.ranked_bars(f"cost-{by}", title, "currency",
                                              [(s.value or f"(no {by})", s.cost) for s in slices]))
    currency = selectors.plan_currency(customer=customer, now=now)
    return {"customer": customer, "usage_charts": usage, "cost_charts": cost_charts, "currency": currency}


@customer_view
def overview(request: HttpRequest, customer: Customer) -> HttpResponse:
    now = _now()
    estimate = selectors.period_estimate(customer=customer, now=now)  # priced once for both halves of the page
    return render(request, "dashboard/overview.html", {**_glance_context(customer, now, estimate),
                                                       **_charts_context(customer, now, estimate), "tab": "overview"})


@customer_view
def glance_partial(request: HttpRequest, customer: Customer) -> HttpResponse:
    now = _now()
    estimate = selectors.period_estimate(customer=customer, now=now)
    return render(request, "dashboard/overview.html#glance", _glance_context(customer, now, estimate))


@customer_view
def charts_partial(request: HttpRequest, customer: Customer) -> HttpResponse:
    now = _now()
    estimate = selectors.period_estimate(customer=customer, now=now)
    return render(request, "dashboard/overview.html#charts", _charts_context(customer, now, estimate))


@customer_view
def usage_breakdown(request: HttpRequest, customer: Customer) -> HttpResponse:
    """Usage and cost by project or a dimension, and the most expensive agent runs of the period."""
    by = request.GET.get("by") or "project"
    if by not in BREAKDOWNS:
        by = "project"
    now = _now()
    costs = selectors.attributed_costs(estimate=selectors.period_estimate(customer=customer, now=now))
    slices = selectors.breakdown(customer=customer, now=now, by=by, costs=costs)
    meters = sorted({m for s in slices for m in s.quantities})
    runs = selectors.runs_by_cost(customer=customer, now=now, costs=costs)
    context = {"customer": customer, "tab": "usage", "by": by, "choices": BREAKDOWNS, "slices": slices,
               "meters": meters, "runs": runs, "currency": selectors.plan_currency(customer=customer, now=now),
               "stopped": selectors.runs_stopped(customer=customer)}
    template = "dashboard/usage.html#breakdown" if _is_htmx(request) and request.GET.get("by") else "dashboard/usage.html"
    return render(request, template, context)


@customer_view
def run_detail(request: HttpRequest, customer: Customer, run_id: str) -> HttpResponse:
    """One run's steps, and its circuit breaker's state with the kill switch (or release, once stopped)."""
    now = _now()
    costs = selectors.attributed_costs(estimate=selectors.period_estimate(customer=customer, now=now))
    steps = selectors.run_steps(customer=customer, now=now, run_id=run_id, costs=costs)
    guard = selectors.run_guard(customer=customer, run_id=run_id)
    if not steps and guard is None:
        return render(request, "dashboard/not_found.html", status=404)
    context = {"customer": customer, "tab": "usage", "run_id": run_id, "steps": steps, "guard": guard,
               "total": sum(s["cost"] for s in steps), "currency": selectors.plan_currency(customer=customer, now=now)}
    return render(request, "dashboard/run.html#steps" if _is_htmx(request) else "dashboard/run.html", context)


@customer_view
def invoices(request: HttpRequest, customer: Customer) -> HttpResponse:
    return render(request, "dashboard/invoices.html", {"customer": customer, "tab": "invoices",
                                                       "invoices": selectors.invoice_list(customer=customer)})


def _settings(request: HttpRequest, customer: Customer, status: int = 200, **forms: Any) -> HttpResponse:
    """The settings page; ``forms`` replaces the empty form of that name with one bound (with its errors)."""
    now = _now()
    context = {
        "customer": customer, "tab": "settings", "users": selectors.dashboard_users(customer=customer),
        "saved": request.GET.get("saved", ""), "alert_settings": selectors.alert_settings(customer=customer, now=now),
        "pauses": selectors.pauses_active(customer=customer), "pause_error": "",
        "budgets": selectors.budgets_shown(customer=customer, now=now),
        "scope_choices": selectors.budget_scope_choices(customer=customer),
        "contact_form": ContactEmailForm(initial={"email": customer.email}), "user_form": UserAddForm(),
        "threshold_form": ThresholdAddForm(), "budget_form": BudgetForm(prefix="budget"),
        "pause_form": PauseForm(prefix="pause", initial={"scope": "customer"}),
        "project_pause_form": PauseForm(prefix="project-pause", initial={"scope": "project"}),
        "gateway_keys": selectors.gateway_keys(customer=customer), "gateway_key_form": GatewayKeyForm(),
        "new_gateway_key": "",
        "payment_method": payment_method_state(customer=customer), "payment_method_error": "",
    }
    context.update(forms)
    return render(request, "dashboard/settings.html", context, status=status)


def _settings_saved(customer: Customer, what: str) -> HttpResponse:
    return redirect(reverse("dashboard:settings", args=[customer.external_id]) + f"?saved={what}")


@customer_view
def settings_page(request: HttpRequest, customer: Customer) -> HttpResponse:
    """GET: dashboard users, the invoice contact and the alert thresholds. POST: change the invoice contact email."""
    if request.method != "POST":
        return _settings(request, customer)
    form = ContactEmailForm(request.POST)
    if not form.is_valid():
        return _settings(request, customer, contact_form=form, status=422)
    invoice_contact_set(customer=customer, email=form.cleaned_data["email"])
    return _settings_saved(customer, "contact")


@customer_view
def settings_payment_method(request: HttpRequest, customer: Customer) -> HttpResponse:
    """POST: open Stripe Checkout (setup mode) to save a card; Stripe sends the customer back to settings,
    and its webhook makes the card the default for invoices."""
    if request.method != "POST":
        return redirect("dashboard:settings", customer_id=customer.external_id)
    back = request.build_absolute_uri(reverse("dashboard:settings", args=[customer.external_id]))
    try:
        url = payment_method_setup_start(customer=customer, success_url=f"{back}?saved=payment-method", cancel_url=back)
    except GatewayError as exc:
        return _settings(request, customer, status=503, payment_method_error=f"Stripe is not available: {exc}")
    return redirect(url)


@customer_view
def settings_user_add(request: HttpRequest, customer: Customer) -> HttpResponse:
    """POST: add a dashboard login for the same customer."""
    if request.method != "POST":
        return redirect("dashboard:settings", customer_id=customer.external_id)
    form = UserAddForm(request.POST)
    if form.is_valid():
        try:
            dashboard_user_add(customer=customer, **form.cleaned_data)
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                form.add_error(name if name in form.fields else None, messages)
        else:
            return _settings_saved(customer, "user")
    return _settings(request, customer, user_form=form, status=422)


@customer_view
def settings_threshold_add(request: HttpRequest, customer: Customer) -> HttpResponse:
    """POST: add one of the customer's own alert thresholds (the same threshold again changes nothing)."""
    if request.method != "POST":
        return redirect("dashboard:settings", customer_id=customer.external_id)
    form = ThresholdAddForm(request.POST)
    if form.is_valid():
        try:
            alert_threshold_create(customer=customer, **form.cleaned_data)
        except DomainError as exc:  # by field, from the one set of rules the API answers with too
            for name, messages in (exc.fields or {"": [exc.message]}).items():
                form.add_error(name if name in form.fields else None, messages)
        else:
            return _settings_saved(customer, "threshold")
    return _settings(request, customer, threshold_form=form, status=422)


@customer_view
def settings_threshold_delete(request: HttpRequest, customer: Customer, pk: int) -> HttpResponse:
    """POST: delete one of the customer's own thresholds. A plan's threshold, the default or another
    customer's threshold is the same 404 as any foreign id."""
    if request.method != "POST":
        return redirect("dashboard:settings", customer_id=customer.external_id)
    try:
        alert_threshold_delete(customer=customer, threshold_id=pk)
    except DomainError as exc:
        if exc.code != CommonCode.NOT_FOUND:
            raise
        return render(request, "dashboard/not_found.html", status=404)
    return _settings_saved(customer, "threshold-deleted")
