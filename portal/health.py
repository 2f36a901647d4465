"""Liveness and readiness: /healthz says the process answers, /readyz checks what it depends on."""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from django.utils import timezone

from billing.common.errors import CommonCode, DomainError
from ledger.backends import ledger_ping
from portal.celery import app as celery_app
from portal.errors import STATUS, answer, body_limit, error_body, too_large, wants_json
from portal.models import Heartbeat

log = logging.getLogger(__name__)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """An unknown path: the contract's JSON body under the API, the error page elsewhere."""
    return answer(request, DomainError(CommonCode.NOT_FOUND, "No such path."))


def forbidden(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return answer(request, DomainError(CommonCode.FORBIDDEN, "You may not do this."))


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form posted without its CSRF token (or from another origin): 403, said the way ``forbidden`` says it."""
    return answer(request, DomainError(CommonCode.FORBIDDEN, "The form's security check failed: reload the page and "
                                       "submit it again."))


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's own 400s (a body it would not read, a bad Host) in the contract's shape, not its HTML."""
    if isinstance(exception, RequestDataTooBig):
        return too_large(request, body_limit(request.path))
    return answer(request, DomainError(CommonCode.INVALID_REQUEST, "The request is not valid."))


def server_error(request: HttpRequest) -> HttpResponse:
    """What nothing handled. The page is rendered without the request: looking up its session or user might be
    what failed."""
    error = DomainError(CommonCode.INTERNAL_ERROR, "Something went wrong on our side.")
    status = STATUS[error.code]
    if wants_json(request):
        return JsonResponse(error_body(error), status=status)
    try:
        page: str = loader.render_to_string("error.html", {"status": status, "code": str(error.code),
                                                      "message": error.message})
    except Exception:  # the error page itself must not fail
        log.exception("the 500 page could not be rendered")
        page = f"<!doctype html><title>Error</title><h1>Server error</h1><p>{error.message}</p>"
    return HttpResponse(page, status=status)


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_broker() -> str | None:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_ledger() -> str | None:
    try:
        ledger_ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_beat(seen_at: datetime | None) -> str | None:
    """Beat and a worker are alive end to end: the heartbeat they record is at most two intervals old. Before
    the first heartbeat there is nothing to judge (a first start, or web alone as in the drills): not failed."""
    limit = 2 * float(settings.TOLLGATE_HEARTBEAT_SECONDS)
    if seen_at is None:
        return None
    age = (timezone.now() - seen_at).total_seconds()
    if age > limit:
        return f"the last heartbeat is {age:.0f} s old (more than {limit:.0f} s): beat or every worker is down"
    return None


def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database(), "broker": _check_broker(), "ledger": _check_ledger()}
    body: dict[str, object] = {}
    if checks["database"] is None:
        beat = Heartbeat.objects.filter(name="beat").first()
        checks["beat"] = _check_beat(beat.seen_at if beat else None)
        body["last_beat"] = beat.seen_at.isoformat() if beat else None
    else:
        checks["beat"] = "unknown: the database did not answer"
    ready = all(error is None for error in checks.values())
    body = {"status": "ready" if ready else "not_ready",
            "checks": {name: ("ok" if error is None else error) for name, error in checks.items()}, **body}
    return JsonResponse(body, status=200 if ready else 503)
