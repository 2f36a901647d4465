"""The console's outbound webhook endpoints (staff only; the operator's, every customer's events go to them):
the list with each endpoint's last delivery, a create form whose answer shows the signing secret once,
disable/enable and delete. Views parse and call one ``billing.notify`` service with the staff user as actor;
a refusal shows the service's message beside the input it names, summarised once above the form."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django import forms
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_POST

from billing.common.errors import DomainError
from billing.notify import selectors, services
from billing.notify.event_types import EVENT_TYPES
from billing.notify.models import WebhookEndpoint
from portal.console.customer_forms import ConsoleForm, apply_error
from portal.console.views import staff_required

PAGE = "console/webhooks.html"
NOTICES = {"disabled": "Endpoint disabled: nothing more is sent to it.", "enabled": "Endpoint enabled again.",
           "deleted": "Endpoint deleted: its pending deliveries are cancelled."}


class EndpointForm(ConsoleForm):
    """Parses only: the URL's shape and the event types are checked by ``endpoint_create``."""

    section = "endpoint"
    url = forms.CharField(max_length=2000, label="URL", help_text="Where each event is POSTed (http or https).")
    events = forms.MultipleChoiceField(choices=[(k, f"{k}: {v}") for k, v in EVENT_TYPES.items()], required=False,
                                       label="Events", widget=forms.CheckboxSelectMultiple)
    description = forms.CharField(max_length=500, required=False, label="Description")


def _endpoint(public_id: str) -> WebhookEndpoint:
    try:
        return selectors.endpoint_get(public_id=public_id)
    except DomainError as exc:
        raise Http404(exc.message) from None


def _page(request: HttpRequest, form: EndpointForm, *, status: int = 200, **extra: Any) -> HttpResponse:
    context = {"endpoints": list(selectors.endpoints_with_last_delivery()), "form": form,
               "notice": NOTICES.get(request.GET.get("saved", ""), ""), "secret": "", "created": None, **extra}
    return render(request, PAGE, context, status=status)


@staff_required
def webhook_endpoints(request: HttpRequest) -> HttpResponse:
    """GET: the endpoints. POST: create one; the answer is the page with its secret, shown this once (only
    here: it is not redirected to, so a reload does not show it again)."""
    form = EndpointForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            endpoint = services.endpoint_create(url=data["url"].strip(), events=data["events"],
                                                description=data["description"], actor=request.user.get_username())
        except (DomainError, DjangoValidationError) as exc:
            apply_error(form, exc)
        else:
            response = _page(request, EndpointForm(), secret=endpoint.secret, created=endpoint)
            patch_cache_control(response, no_store=True)  # the secret is kept by no cache or history
            return response
    return _page(request, form, status=422 if form.is_bound else 200)


@staff_required
@require_POST
def webhook_endpoint_active(request: HttpRequest, endpoint_id: str) -> HttpResponse:
    """Disable (``active=0``) or enable again (``active=1``)."""
    active = request.POST.get("active") == "1"
    services.endpoint_active_set(endpoint=_endpoint(endpoint_id), active=active, actor=request.user.get_username())
    return redirect(reverse("console:webhooks") + f"?saved={'enabled' if active else 'disabled'}")


@staff_required
@require_POST
def webhook_endpoint_delete(request: HttpRequest, endpoint_id: str) -> HttpResponse:
    services.endpoint_delete(endpoint=_endpoint(endpoint_id), now=datetime.now(timezone.utc),
                             actor=request.user.get_username())
    return redirect(reverse("console:webhooks") + "?saved=deleted")
