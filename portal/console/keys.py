"""The operator's own API keys (no customer: ingest for every customer, read, admin), staff only. A key's
secret is in the answer to its creation, once; customers' keys are on each customer's page."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from billing.common.errors import DomainError
from billing.customers.services import api_key_create, api_key_revoke
from portal.console import selectors
from portal.console.customer_forms import ApiKeyForm, apply_error, is_htmx
from portal.console.views import staff_required


def _page(request: HttpRequest, status: int = 200, **context: Any) -> HttpResponse:
    context = {"keys": selectors.operator_keys(), "key_form": ApiKeyForm(), "new_key": "", "notice": "", **context}
    template = "console/api_keys.html#keys" if is_htmx(request) else "console/api_keys.html"
    return render(request, template, context, status=200 if is_htmx(request) else status)


@staff_required
def operator_keys(request: HttpRequest) -> HttpResponse:
    """GET: the keys. POST: create one (its secret shown on the answer only)."""
    if request.method != "POST":
        return _page(request)
    form = ApiKeyForm(request.POST)
    if form.is_valid():
        try:
            _, raw = api_key_create(name=form.cleaned_data["name"], scope=form.cleaned_data["scope"],
                                    actor=request.user.get_username())
        except DomainError as exc:
            apply_error(form, exc)
        else:
            return _page(request, new_key=raw, notice="Key created.")
    return _page(request, status=422, key_form=form)


@staff_required
@require_POST
def operator_key_revoke(request: HttpRequest, prefix: str) -> HttpResponse:
    key = selectors.customer_key(customer=None, prefix=prefix)
    if key is None:
        raise Http404("No such operator key.")
    api_key_revoke(key=key, actor=request.user.get_username())
    return _page(request, notice=f"Key {key.name} revoked: refused from its next request.")
