"""Liveness and readiness: /healthz says the process answers, /readyz checks what it depends on."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, JsonResponse

from ledger.backends import ledger_ping
from portal.celery import app as celery_app
from portal.models import Heartbeat


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """Every error body is JSON (contract.md), also for an unknown path."""
    return JsonResponse({"error": {"code": "not_found", "message": "No such path."}}, status=404)


def server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"error": {"code": "internal_error", "message": "Something went wrong on our side."}},
                        status=500)


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


def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database(), "broker": _check_broker(), "ledger": _check_ledger()}
    ready = all(error is None for error in checks.values())
    body: dict[str, object] = {
        "status": "ready" if ready else "not_ready",
        "checks": {name: ("ok" if error is None else error) for name, error in checks.items()},
    }
    if checks["database"] is None:
        beat = Heartbeat.objects.filter(name="beat").first()
        body["last_beat"] = beat.seen_at.isoformat() if beat else None
    return JsonResponse(body, status=200 if ready else 503)
