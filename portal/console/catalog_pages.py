"""The console's catalog set-up pages (staff only): meters (list, create, edit what may still change) and
new plans. Views parse a form, call one catalog service and re-render; a refusal shows the service's
message beside the field it names."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from billing.catalog.models import Meter
from billing.catalog.selectors import meter_list
from billing.catalog.services import meter_create, meter_frozen_fields, meter_update, plan_add
from billing.common.errors import DomainError
from portal.console.catalog_forms import MeterEditForm, MeterForm, PlanForm
from portal.console.views import staff_required
from portal.dashboard.forms import add_domain_errors


def _meters_page(request: HttpRequest, form: MeterForm, status: int = 200, created: str = "") -> HttpResponse:
    template = "console/meters.html#meters" if request.htmx else "console/meters.html"  # type: ignore[attr-defined]
    # htmx swaps 2xx answers only: a refused form comes back 200 to a fragment request, 422 to a page
    return render(request, template, {"meters": meter_list(), "form": form, "created": created},
                  status=200 if request.htmx else status)  # type: ignore[attr-defined]


@staff_required
def meters(request: HttpRequest) -> HttpResponse:
    """GET: the meters and a blank form. POST: create one (the same definition twice is harmless)."""
    if request.method != "POST":
        return _meters_page(request, MeterForm(initial={"unit": "unit", "aggregation": "sum"}))
    form = MeterForm(request.POST)
    if not form.is_valid():
        return _meters_page(request, form, status=422)
    data = form.cleaned_data
    try:
        meter, created = meter_create(key=data["key"], name=data["name"], aggregation=data["aggregation"],
                                      unit=data["unit"], unique_by=data["unique_by"])
    except DomainError as exc:
        add_domain_errors(form, exc, fallback="key")
        return _meters_page(request, form, status=409)
    except ValidationError as exc:
        for name, messages in exc.message_dict.items():
            form.add_error(name if name in form.fields else None, messages)
        return _meters_page(request, form, status=422)
    if not created:
        form.add_error("key", f"Meter '{meter.key}' already exists.")
        return _meters_page(request, form, status=409)
    return _meters_page(request, MeterForm(initial={"unit": "unit", "aggregation": "sum"}), created=meter.key)


@staff_required
def meter_edit(request: HttpRequest, key: str) -> HttpResponse:
    """Rename a meter, or redefine one without events; once it has events, its aggregation, unit and
    dimension counted are refused by ``meter_update`` and its message is shown."""
    meter = Meter.objects.filter(key=key).first()
    if meter is None:
        raise Http404("No such meter.")
    frozen = meter_frozen_fields(meter=meter)
    if request.method != "POST":
        form = MeterEditForm(initial={f: getattr(meter, f) for f in ("name", "aggregation", "unit", "unique_by")},
                             frozen=frozen)
        return render(request, "console/meter.html", {"meter": meter, "form": form})
    form = MeterEditForm(request.POST, frozen=frozen)
    if form.is_valid():
        try:
            meter_update(meter=meter, data={k: v if k != "unit" else (v or "unit") for k, v in form.cleaned_data.items()},
                         actor=request.user.get_username())
        except DomainError as exc:
            add_domain_errors(form, exc)
        else:
            return redirect(reverse("console:meters") + f"?saved={meter.key}")
    return render(request, "console/meter.html", {"meter": meter, "form": form}, status=422)


@staff_required
def plan_new(request: HttpRequest) -> HttpResponse:
    """A new plan (key, name, currency); its first rate-card version is then drafted in the editor."""
    form = PlanForm(request.POST or None, initial={"currency": "USD"})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            plan = plan_add(key=data["key"], name=data["name"], currency=data["currency"],
                            actor=request.user.get_username())
        except DomainError as exc:
            add_domain_errors(form, exc, fallback="key")
        else:
            return redirect(reverse("console:editor", args=[plan.key]))
    status = 422 if request.method == "POST" else 200
    return render(request, "console/plan_new.html", {"form": form}, status=status)
