"""The console's customers (staff only): the list with a create form, and one customer's page, whose sections
(details, plan, credits, projects, dashboard users, API keys) each post to their own view. Views parse, call
one service and answer the section as an HTMX fragment (or, without JavaScript, redirect back to the page);
a refusal shows the service's message beside the input it names, summarised once above the form."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing.common.errors import DomainError
from billing.customers.models import Customer, CustomerUser
from billing.customers.selectors import customer_find
from billing.customers.services import (
    api_key_create,
    api_key_revoke,
    customer_create,
    customer_update,
    customer_user_active_set,
    customer_user_create,
    customer_user_password_set,
    project_create,
)
from portal.console import selectors
from portal.console.customer_forms import (
    ApiKeyForm,
    CancelForm,
    CreditGrantForm,
    CustomerForm,
    DashboardUserForm,
    PasswordForm,
    ProjectForm,
    SubscriptionForm,
    apply_error,
    is_htmx,
)
from portal.console.views import staff_required

PAGE = "console/customer.html"


def customer_or_404(customer_id: str) -> Customer:
    customer = customer_find(external_id=customer_id)
    if customer is None:
        raise Http404("No such customer.")
    return customer


def page_context(customer: Customer, **overrides: Any) -> dict[str, Any]:
    """The page's data with a fresh form per section; ``overrides`` puts in the bound ones (with errors)
    and the notices."""
    data = selectors.customer_page(customer=customer, now=datetime.now(timezone.utc))
    context = {"customer": customer, **data, "notice": "", "notice_for": "", "new_key": "", "password_user": None,
               "details_form": CustomerForm(initial=CustomerForm.initial_of(customer), editing=True),
               "subscription_form": SubscriptionForm(plans=data["plans"]), "cancel_form": CancelForm(),
               "grant_form": CreditGrantForm(initial={"currency": data["currency"]}), "project_form": ProjectForm(),
               "user_form": DashboardUserForm(), "password_form": PasswordForm(), "key_form": ApiKeyForm()}
    context.update(overrides)
    return context


def section(request: HttpRequest, customer: Customer, name: str, *, failed: bool = False, notice: str = "",
            **overrides: Any) -> HttpResponse:
    """Answer a section's post: its fragment to HTMX (200, so that HTMX swaps it in, errors included); without
    JavaScript the whole page on a refusal (422) and a redirect back to the section on success."""
    if is_htmx(request):
        context = page_context(customer, notice=notice, notice_for=name, **overrides)
        return render(request, f"{PAGE}#{name}", context)
    if failed or overrides.get("new_key"):
        context = page_context(customer, notice=notice, notice_for=name, **overrides)
        return render(request, PAGE, context, status=422 if failed else 200)
    return redirect(reverse("console:customer", args=[customer.external_id]) + f"?saved={name}#{name}")


def _actor(request: HttpRequest) -> str:
    return request.user.get_username()


@staff_required
def customer_list(request: HttpRequest) -> HttpResponse:
    """GET: a page of customers (``?page=``) with the plan each is on now. POST: create one, then go to its page."""
    form = CustomerForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            customer = customer_create(external_id=data["external_id"], name=data["name"], email=data["email"],
                                       metadata=data["metadata"], billing=form.billing(), actor=_actor(request))
        except (DomainError, DjangoValidationError) as exc:
            apply_error(form, exc, {"id": "external_id", "": "external_id"})
        else:
            return redirect(reverse("console:customer", args=[customer.external_id]) + "?saved=created")
    status = 422 if form.is_bound else 200
    listing = selectors.customers_overview(now=datetime.now(timezone.utc), page=request.GET.get("page") or 1)
    return render(request, "console/customers.html", {**listing, "form": form}, status=status)


@staff_required
def customer_detail(request: HttpRequest, customer_id: str) -> HttpResponse:
    customer = customer_or_404(customer_id)
    saved = request.GET.get("saved", "")
    return render(request, PAGE, page_context(customer, notice="Saved." if saved else "", notice_for=saved,
                                              created=saved == "created"))


@staff_required
@require_POST
def customer_edit(request: HttpRequest, customer_id: str) -> HttpResponse:
    customer = customer_or_404(customer_id)
    form = CustomerForm(request.POST, editing=True)
    if form.is_valid():
        try:
            customer_update(customer=customer, data=form.cleaned_data, actor=_actor(request))
        except (DomainError, DjangoValidationError) as exc:
            apply_error(form, exc)
        else:
            return section(request, customer, "details", notice="Details saved.")
    return section(request, customer, "details", failed=True, details_form=form)


@staff_required
@require_POST
def project_add(request: HttpRequest, customer_id: str) -> HttpResponse:
    customer = customer_or_404(customer_id)
    form = ProjectForm(request.POST)
    if form.is_valid():
        try:
            project_create(customer=customer, key=form.cleaned_data["key"], name=form.cleaned_data["name"],
                           actor=_actor(request))
        except (DomainError, DjangoValidationError) as exc:
            apply_error(form, exc, {"": "key"})
        else:
            return section(request, customer, "projects", notice=f"Project {form.cleaned_data['key']} added.")
    return section(request, customer, "projects", failed=True, project_form=form)


def _user_of(customer: Customer, user_id: int) -> CustomerUser:
    binding = selectors.customer_user(customer=customer, user_id=user_id)
    if binding is None:
        raise Http404("No such dashboard user of this customer.")
    return binding


@staff_required
@require_POST
def user_add(request: HttpRequest, customer_id: str) -> HttpResponse:
    customer = customer_or_404(customer_id)
    form = DashboardUserForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            customer_user_create(customer=customer, username=data["username"], password=data["password"],
                                 email=data["email"], actor=_actor(request))
        except DomainError as exc:
            apply_error(form, exc)
        else:
            return section(request, customer, "users", notice=f"{data['username']} can log in to the dashboard now.")
    return section(request, customer, "users", failed=True, user_form=form)


@staff_required
@require_POST
def user_password(request: HttpRequest, customer_id: str, user_id: int) -> HttpResponse:
    """Reset a dashboard user's password to one the operator gives them."""
    customer = customer_or_404(customer_id)
    binding = _user_of(customer, user_id)
    form = PasswordForm(request.POST)
    if form.is_valid():
        try:
            customer_user_password_set(binding=binding, password=form.cleaned_data["password"], actor=_actor(request))
        except DomainError as exc:
            apply_error(form, exc)
        else:
            return section(request, customer, "users", notice=f"New password of {binding.user.get_username()} set.")
    return section(request, customer, "users", failed=True, password_form=form, password_user=binding.user_id)


@staff_required
@require_POST
def user_active(request: HttpRequest, customer_id: str, user_id: int) -> HttpResponse:
    """Deactivate (``active=0``) or reactivate (``active=1``) a dashboard user."""
    customer = customer_or_404(customer_id)
    binding = _user_of(customer, user_id)
    active = request.POST.get("active") == "1"
    customer_user_active_set(binding=binding, active=active, actor=_actor(request))
    name = binding.user.get_username()
    return section(request, customer, "users", notice=f"{name} {'reactivated' if active else 'deactivated'}.")


@staff_required
@require_POST
def key_add(request: HttpRequest, customer_id: str) -> HttpResponse:
    """A key restricted to this customer; its secret is in the answer, once."""
    customer = customer_or_404(customer_id)
    form = ApiKeyForm(request.POST)
    if form.is_valid():
        try:
            _, raw = api_key_create(name=form.cleaned_data["name"], scope=form.cleaned_data["scope"],
                                    customer=customer, actor=_actor(request))
        except DomainError as exc:
            apply_error(form, exc)
        else:
            return section(request, customer, "keys", notice="Key created.", new_key=raw)
    return section(request, customer, "keys", failed=True, key_form=form)


@staff_required
@require_POST
def key_revoke(request: HttpRequest, customer_id: str, prefix: str) -> HttpResponse:
    customer = customer_or_404(customer_id)
    key = selectors.customer_key(customer=customer, prefix=prefix)
    if key is None:
        raise Http404("No such key of this customer.")
    api_key_revoke(key=key, actor=_actor(request))
    return section(request, customer, "keys", notice=f"Key {key.name} revoked: refused from its next request.")

