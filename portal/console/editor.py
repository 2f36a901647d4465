"""The rate-card version editor (staff only): a plan's draft, kept on the server (one per plan; resumed
when the editor is opened again), edited over htmx with the real validation result shown after every
change, compared side by side with the version in effect, simulated per customer and line, and published
through the catalog's publish service. Views parse, call one service or selector, and render."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_POST

from billing.catalog import ratecard, schema
from billing.catalog.diff import ratecard_diff
from billing.catalog.drafts import draft_discard, draft_get, draft_publish, draft_save
from billing.catalog.models import Plan, RateCardVersion
from billing.catalog.selectors import meter_keys, meter_list, plan_get, plan_subscribers, version_in_effect
from billing.common.errors import DomainError
from billing.invoicing.selectors import draft_comparison
from portal.console.editor_form import editor_form
from portal.console.forms import apply_action, definition_from_form, number_problems, with_placeholders
from portal.console.views import staff_required

EMPTY: dict[str, Any] = {"base_fee": "0", "charges": [], "limits": []}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _when(raw: str) -> datetime | None:
    """The form's ``datetime-local`` (UTC) as an aware instant; None when it is not a date and time."""
    when = parse_datetime(raw.strip()) if raw and raw.strip() else None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when


def _validated(plan: Plan, document: dict[str, Any], effective_from: str
               ) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """The draft's canonical document when valid, and its problems by path (all amounts that are not
    numbers at once; then the catalog's own validation, as publishing will run it)."""
    problems = number_problems(document)
    when = _when(effective_from)
    if effective_from.strip() and when is None:
        problems.append(("effective_from", "a date and time (UTC) is required"))
    flagged = {path for path, _ in problems}
    checkable = with_placeholders(document, flagged) if flagged else document
    payload = {"key": plan.key, "name": plan.name, "currency": plan.currency, "interval": plan.interval,
               "effective_from": (when or _now()).isoformat(), **checkable}
    try:
        entry = schema.parse_plan(payload)
    except schema.CatalogError as exc:
        return None, problems + [(p.lstrip("."), m) for p, m in exc.problems if p.lstrip(".") not in flagged]
    found: list[tuple[str, str]] = []
    canonical = schema.validate_plan(entry, "", meter_keys(), found)
    problems += [(path.lstrip("."), message) for path, message in found if path.lstrip(".") not in flagged]
    return (None if problems else canonical), problems


def _context(plan: Plan, document: dict[str, Any], problems: list[tuple[str, str]], effective_from: str,
             **extra: Any) -> dict[str, Any]:
    meters = [(m.key, m.name) for m in meter_list()]
    return {"plan": plan, "meters": meters, "document": document, "problems": problems, "effective_from": effective_from,
            **editor_form(document=document, problems=problems, currency=plan.currency,
                          effective_from=effective_from, meters=meters), **extra}


def _page(request: HttpRequest, plan: Plan, document: dict[str, Any], problems: list[tuple[str, str]],
          effective_from: str, status: int = 200) -> HttpResponse:
    """The whole editor page (the fragments need neither the draft's banner nor the plan's subscribers)."""
    return render(request, "console/editor.html", _context(
        plan, document, problems, effective_from, draft=draft_get(plan=plan),
        subscribers=plan_subscribers(plan=plan, now=_now())), status=status)


def _posted(request: HttpRequest) -> tuple[dict[str, Any], str]:
    return definition_from_form(request.POST), request.POST.get("effective_from", "").strip()


def _form_fragment(request: HttpRequest, plan: Plan, document: dict[str, Any], effective_from: str,
                   **extra: Any) -> HttpResponse:
    _, problems = _validated(plan, document, effective_from)
    return render(request, "console/editor.html#form", _context(plan, document, problems, effective_from, **extra))


@staff_required
def version_editor(request: HttpRequest, key: str) -> HttpResponse:
    """GET: the plan's saved draft when it has one, else a draft prefilled from the version in effect.
    POST: publish it (the draft is then dropped); a refusal shows the problems beside their fields."""
    plan = plan_get(key=key)
    if request.method == "POST":
        return _publish(request, plan)
    draft = draft_get(plan=plan)
    if draft is not None:
        document, effective_from = draft.document, draft.effective_from
    else:
        current = version_in_effect(plan=plan, at=_now()) or plan.versions.order_by("-number").first()
        document = current.rate_card.as_definition() if current else dict(EMPTY)
        effective_from = _now().strftime("%Y-%m-%dT%H:%M")
    _, problems = _validated(plan, document, effective_from) if draft is not None else (None, [])
    return _page(request, plan, document, problems, effective_from)


def _publish(request: HttpRequest, plan: Plan) -> HttpResponse:
    document, effective_from = _posted(request)
    canonical, problems = _validated(plan, document, effective_from)
    when = _when(effective_from)
    if when is None and not problems:
        problems = [("effective_from", "a date and time (UTC) is required")]
    if canonical is None or when is None or problems:
        return _page(request, plan, document, problems, effective_from, status=422)
    try:
        version = draft_publish(plan=plan, document=document, effective_from=when.isoformat(),
                                actor=request.user.get_username())
    except schema.CatalogError as exc:
        problems = [(p.lstrip("."), m) for p, m in exc.problems]
        return _page(request, plan, document, problems, effective_from, status=422)
    return redirect(reverse("console:plan", args=[plan.key]) + f"#v{version.number}")


@staff_required
@require_POST
def editor_change(request: HttpRequest, key: str) -> HttpResponse:
    """HTMX: a button (add or remove a tier, a charge, a limit) or a changed field: the form again, with the
    real validation result of what it now holds."""
    plan = plan_get(key=key)
    document, effective_from = _posted(request)
    first_meter = meter_list().values_list("key", flat=True).first() or ""
    document = apply_action(document, request.POST.get("tier_action", ""), first_meter)
    return _form_fragment(request, plan, document, effective_from, draft=draft_get(plan=plan))


@staff_required
@require_POST
def editor_check(request: HttpRequest, key: str) -> HttpResponse:
    """HTMX: a field changed: the problem summary and each field's message (out of band) from the real
    validation; the inputs themselves are left alone, so nothing typed meanwhile is lost."""
    plan = plan_get(key=key)
    document, effective_from = _posted(request)
    _, problems = _validated(plan, document, effective_from)
    return render(request, "console/editor.html#checked", _context(plan, document, problems, effective_from))


@staff_required
@require_POST
def draft_save_view(request: HttpRequest, key: str) -> HttpResponse:
    """Keep the editor's draft on the server (as typed: a draft may still be invalid)."""
    plan = plan_get(key=key)
    document, effective_from = _posted(request)
    try:
        draft = draft_save(plan=plan, document=document, effective_from=effective_from,
                           actor=request.user.get_username())
    except DomainError as exc:
        problems = [(path, " ".join(messages)) for path, messages in (exc.fields or {"": [exc.message]}).items()]
        return render(request, "console/editor.html#form", _context(plan, document, problems, effective_from,
                                                                   draft=draft_get(plan=plan)), status=200)
    if not request.htmx:  # type: ignore[attr-defined]
        return redirect(reverse("console:editor", args=[plan.key]))
    return _form_fragment(request, plan, document, effective_from, draft=draft, saved=True)


@staff_required
@require_POST
def draft_discard_view(request: HttpRequest, key: str) -> HttpResponse:
    plan = plan_get(key=key)
    draft_discard(plan=plan, actor=request.user.get_username())
    return redirect(reverse("console:plan", args=[plan.key]))


def _invalid(request: HttpRequest, plan: Plan, document: dict[str, Any], effective_from: str,
             problems: list[tuple[str, str]], what: str) -> HttpResponse:
    """An invalid draft cannot be simulated or compared: a one-line note where the result would go, and the
    form again (out of band) with each problem beside its field; the problems are not repeated."""
    form = render_to_string("console/editor.html#form", _context(plan, document, problems, effective_from, oob=True,
                                                                draft=draft_get(plan=plan)), request=request)
    note = (f'<p class="error" role="alert">The draft has {len(problems)} problem{"s" if len(problems) != 1 else ""} '
            f"(listed at the top of the form): fix {'it' if len(problems) == 1 else 'them'} to {what}.</p>")
    return HttpResponse(note + form)


@staff_required
@require_POST
def editor_simulate(request: HttpRequest, key: str) -> HttpResponse:
    """HTMX: the open period priced for the ten largest subscribers, as it stands and under the draft,
    line by line (nothing is saved)."""
    plan = plan_get(key=key)
    document, effective_from = _posted(request)
    canonical, problems = _validated(plan, document, effective_from)
    if canonical is None:
        return _invalid(request, plan, document, effective_from, problems, "simulate")
    rows = draft_comparison(plan=plan, card=ratecard.parse(canonical), now=_now(),
                            customer_id=request.POST.get("simulate_customer", "").strip())[:10]
    total = sum((r["difference"] for r in rows), Decimal(0))
    return render(request, "console/editor.html#simulation", {"rows": rows, "plan": plan, "total_difference": total})


@staff_required
@require_POST
def editor_diff(request: HttpRequest, key: str) -> HttpResponse:
    """HTMX: the draft side by side with the version in effect."""
    plan = plan_get(key=key)
    document, effective_from = _posted(request)
    canonical, problems = _validated(plan, document, effective_from)
    if canonical is None:
        return _invalid(request, plan, document, effective_from, problems, "compare it")
    current = version_in_effect(plan=plan, at=_now())
    return render(request, "console/diff.html#diff", {"plan": plan, "current": current, "label": "Draft",
                                                      "rows": ratecard_diff(_definition(current), canonical)})


def _definition(version: RateCardVersion | None) -> dict[str, Any] | None:
    return version.rate_card.as_definition() if version is not None else None


@staff_required
def version_diff(request: HttpRequest, key: str, number: int) -> HttpResponse:
    """A published version side by side with the version in effect now."""
    plan = plan_get(key=key)
    version = plan.versions.filter(number=number).first()
    if version is None:
        raise Http404(f"No version {number} of '{plan.key}'.")
    current = version_in_effect(plan=plan, at=_now())
    return render(request, "console/diff.html", {"plan": plan, "current": current, "label": f"Version {version.number}",
                                                 "rows": ratecard_diff(_definition(current), _definition(version) or {})})
