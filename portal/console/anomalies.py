"""The console's anomaly review queue: open anomalies, one anomaly's review, resolving it."""

from __future__ import annotations

from datetime import datetime, timezone

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing.common.errors import DomainError
from billing.guardrails.anomalies.review import anomaly_resolve
from billing.guardrails.anomalies.selectors import anomalies_list, anomaly_get, anomaly_multiple
from billing.guardrails.models import Anomaly
from portal.console.anomaly_review import anomaly_review, review_as_context
from portal.console.views import staff_required

RECENT = 20


@staff_required
def anomaly_queue(request: HttpRequest) -> HttpResponse:
    open_rows = [(a, anomaly_multiple(a)) for a in anomalies_list(status=Anomaly.Status.OPEN)]
    resolved = [(a, anomaly_multiple(a)) for a in anomalies_list(status=Anomaly.Status.RESOLVED)[:RECENT]]
    return render(request, "console/anomalies.html", {"open_rows": open_rows, "resolved": resolved})


@staff_required
def anomaly_detail(request: HttpRequest, anomaly_id: str) -> HttpResponse:
    return render(request, "console/anomaly.html", review_as_context(anomaly_review(anomaly=anomaly_get(public_id=anomaly_id))))


@staff_required
@require_POST
def anomaly_resolve_view(request: HttpRequest, anomaly_id: str) -> HttpResponse:
    anomaly = anomaly_get(public_id=anomaly_id)
    try:
        anomaly = anomaly_resolve(anomaly=anomaly, resolution=request.POST.get("resolution", ""),
                                  note=request.POST.get("note", "").strip(), actor=request.user.get_username(),
                                  now=datetime.now(timezone.utc))
    except DomainError as exc:
        messages.error(request, f"{anomaly.public_id}: {exc.message}"
                       + "".join(f" {m}" for ms in (exc.fields or {}).values() for m in ms))
        return redirect(reverse("console:anomaly", args=[anomaly.public_id]))
    what = "resumed (its pause lifted)" if anomaly.resolution == Anomaly.Resolution.RESUME else "kept paused"
    messages.success(request, f"Anomaly {anomaly.public_id} of {anomaly.customer.external_id}: {what}.")
    return redirect(reverse("console:anomalies"))
