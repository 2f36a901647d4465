"""The web face of the domain's errors: ``STATUS``, the one table from each error code to its HTTP status,
and the two places that answer with it.

- ``api_exception_handler`` (DRF's ``EXCEPTION_HANDLER``): every API error as the contract's body
  ``{"error": {"code", "message", "fields"?, ...}}``, for a ``DomainError`` and for DRF's and Django's own
  exceptions alike.
- ``HostileRequestMiddleware``: a path or query that no view could use (a NUL character) is ``400
  invalid_request`` before any view or query runs.
- ``DomainErrorMiddleware``: outside the API, a ``DomainError`` (a service's 503 ``rollups_drift``, say)
  is a page with its status and message, or the same JSON body for a JSON request (the Stripe webhook);
  only what nothing handles is a 500. The ledger's ``LedgerUnavailable`` is a 503 with Retry-After.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from billing.catalog.errors import CatalogCode
from billing.common.errors import CommonCode, DomainError, ErrorCode
from billing.common.sane import text_problem
from billing.customers.errors import CustomersCode
from billing.guardrails.errors import GuardrailsCode
from billing.invoicing.errors import InvoicingCode
from billing.payments.errors import PaymentsCode
from billing.usage.contract import batch_max_bytes
from billing.usage.errors import UsageCode
from ledger.backends.base import LedgerUnavailable

log = logging.getLogger(__name__)

# Every code of every app, with its status (docs/api.md, "Errors", lists the same; a test holds them equal).
STATUS: dict[ErrorCode, int] = {
    CommonCode.INVALID_JSON: 400,
    CommonCode.INVALID_SHAPE: 400,
    CommonCode.INVALID_REQUEST: 400,
    PaymentsCode.INVALID_SIGNATURE: 400,
    CommonCode.NOT_AUTHENTICATED: 401,
    CommonCode.INVALID_API_KEY: 401,
    GuardrailsCode.QUOTA_EXCEEDED: 402,
    GuardrailsCode.SPEND_CAP_EXCEEDED: 402,
    GuardrailsCode.INSUFFICIENT_CREDITS: 402,
    GuardrailsCode.BUDGET_EXCEEDED: 402,
    GuardrailsCode.CIRCUIT_OPEN: 402,
    GuardrailsCode.PAUSED: 402,
    GuardrailsCode.PAUSE_OPERATOR_ONLY: 403,
    CommonCode.FORBIDDEN: 403,
    CustomersCode.CUSTOMER_FORBIDDEN: 403,
    CommonCode.NOT_FOUND: 404,
    InvoicingCode.NO_SUBSCRIPTION: 404,
    CommonCode.METHOD_NOT_ALLOWED: 405,
    CommonCode.IDEMPOTENCY_CONFLICT: 409,
    CommonCode.ALREADY_EXISTS: 409,
    CatalogCode.VERSION_IMMUTABLE: 409,
    CatalogCode.METER_IMMUTABLE: 409,
    GuardrailsCode.RESERVATION_CLOSED: 409,
    GuardrailsCode.ANOMALY_ALREADY_RESOLVED: 409,
    InvoicingCode.INVALID_INVOICE_STATE: 409,
    CommonCode.PAYLOAD_TOO_LARGE: 413,
    CommonCode.UNSUPPORTED_MEDIA_TYPE: 415,
    CommonCode.VALIDATION_ERROR: 422,
    CustomersCode.UNKNOWN_CUSTOMER: 422,
    CatalogCode.UNKNOWN_METER: 422,
    CustomersCode.UNKNOWN_PROJECT: 422,
    UsageCode.UNKNOWN_ORIGINAL: 422,
    UsageCode.ORIGINAL_NOT_BILLABLE: 422,
    UsageCode.CORRECTION_EXCEEDS_ORIGINAL: 422,
    UsageCode.CORRECTION_NOT_SUPPORTED: 422,
    CatalogCode.UNKNOWN_PLAN: 422,
    CatalogCode.INVALID_CATALOG: 422,
    CommonCode.PERIOD_CLOSED: 422,
    InvoicingCode.PERIOD_OPEN: 422,
    CommonCode.RATE_LIMITED: 429,
    CommonCode.INTERNAL_ERROR: 500,
    CommonCode.LEDGER_UNAVAILABLE: 503,
    CommonCode.UNAVAILABLE: 503,
    UsageCode.ROLLUPS_DRIFT: 503,
}

# Seconds a client should wait before retrying: the ledger is back within a second, the database after a
# restart or failover within a few; a page's other 503 (``rollups_drift``: an operator's repair) is worth a minute
LEDGER_RETRY_AFTER, DATABASE_RETRY_AFTER, PAGE_RETRY_AFTER = "1", "5", "60"
RETRY_AFTER: dict[ErrorCode, str] = {CommonCode.LEDGER_UNAVAILABLE: LEDGER_RETRY_AFTER,
                                     CommonCode.UNAVAILABLE: DATABASE_RETRY_AFTER}

LEDGER_AWAY = "The ledger did not answer; retry with the same ids."
DATABASE_AWAY = "The database did not answer; nothing was changed by this request unless it says so. Retry shortly."


def error_body(error: DomainError) -> dict[str, Any]:
    return {"error": error.as_dict()}


def error_response(error: DomainError) -> Response:
    """The API's answer to ``error``: its body and its code's status."""
    headers = {"Retry-After": RETRY_AFTER[error.code]} if error.code in RETRY_AFTER else None
    return Response(error_body(error), status=STATUS[error.code], headers=headers)


def _flatten_fields(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten_fields(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            out[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                out.update(_flatten_fields(item, f"{prefix}[{index}]"))
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


def _as_domain_error(exc: Exception) -> DomainError | None:
    """DRF's and Django's exceptions as the domain error they stand for; None for any other."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, LedgerUnavailable):
        return DomainError(CommonCode.LEDGER_UNAVAILABLE, LEDGER_AWAY)
    if isinstance(exc, OperationalError | InterfaceError):  # PostgreSQL restarting, unreachable, out of connections
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        return DomainError(CommonCode.UNAVAILABLE, DATABASE_AWAY)
    if isinstance(exc, DjangoValidationError):
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return DomainError(CommonCode.VALIDATION_ERROR, "The request is not valid.", fields)
    if isinstance(exc, Http404 | exceptions.NotFound):
        return DomainError(CommonCode.NOT_FOUND, "Not found.")
    if isinstance(exc, exceptions.ParseError):
        return DomainError(CommonCode.INVALID_JSON, f"The body is not valid JSON: {exc.detail}")
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return DomainError(CommonCode.UNSUPPORTED_MEDIA_TYPE, str(exc.detail))
    if isinstance(exc, exceptions.NotAuthenticated):
        return DomainError(CommonCode.NOT_AUTHENTICATED, str(exc.detail))
    if isinstance(exc, exceptions.AuthenticationFailed):
        return DomainError(CommonCode.INVALID_API_KEY, str(exc.detail))
    if isinstance(exc, exceptions.PermissionDenied):
        return DomainError(CommonCode.FORBIDDEN, str(exc.detail))
    if isinstance(exc, exceptions.MethodNotAllowed):
        return DomainError(CommonCode.METHOD_NOT_ALLOWED, str(exc.detail))
    if isinstance(exc, exceptions.ValidationError):
        if exc.get_codes() == {"non_field_errors": ["invalid"]}:  # DRF: "Expected a dictionary, but got list"
            return DomainError(CommonCode.INVALID_SHAPE, "Expected a JSON object.")
        return DomainError(CommonCode.VALIDATION_ERROR, "The request is not valid.", _flatten_fields(exc.detail))
    return None


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, exceptions.Throttled):
        wait = math.ceil(getattr(exc, "wait", None) or 1)
        return Response(error_body(DomainError(CommonCode.RATE_LIMITED, f"Too many requests; retry in {wait} s.")),
                        status=STATUS[CommonCode.RATE_LIMITED], headers={"Retry-After": str(wait)})
    error = _as_domain_error(exc)
    if error is not None:
        response = error_response(error)
        if isinstance(exc, exceptions.AuthenticationFailed | exceptions.NotAuthenticated):
            drf_response = drf_exception_handler(exc, context)
            if drf_response is not None and "WWW-Authenticate" in drf_response:
                response["WWW-Authenticate"] = drf_response["WWW-Authenticate"]
        return response
    if isinstance(exc, exceptions.APIException):  # DRF's others (406...): their own code and status
        codes = exc.get_codes()
        return Response({"error": {"code": codes if isinstance(codes, str) else "error", "message": str(exc.detail)}},
                        status=exc.status_code)
    return None


class DomainErrorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if request.path.startswith("/api/"):  # DRF's handler answers there
            return None
        if isinstance(exception, LedgerUnavailable):
            exception = DomainError(CommonCode.LEDGER_UNAVAILABLE, "The ledger did not answer; try again in a moment.")
        elif isinstance(exception, OperationalError | InterfaceError):
            log.warning("database unavailable: %s: %s", type(exception).__name__, exception)
            exception = DomainError(CommonCode.UNAVAILABLE, "The database did not answer; try again in a moment.")
            request.user = AnonymousUser()  # the page must not ask the database who is logged in
        if not isinstance(exception, DomainError):
            return None
        status = STATUS[exception.code]
        response = answer(request, exception)
        if status == 503:
            response["Retry-After"] = RETRY_AFTER.get(exception.code, PAGE_RETRY_AFTER)
        return response


# Paths whose clients are programs: the API, the OpenAI-compatible gateway, the payment providers' webhooks
_MACHINE_PATHS = ("/api/", "/gateway/", "/webhooks/")


def wants_json(request: HttpRequest) -> bool:
    """Whether an error is answered in the contract's JSON body (a program's path, or a JSON request) rather
    than as the error page."""
    return request.path.startswith(_MACHINE_PATHS) or request.content_type == "application/json"


def answer(request: HttpRequest, error: DomainError) -> HttpResponse:
    """``error`` as JSON under ``/api/`` (and the gateway's and webhooks' paths) and for a JSON request, as the
    error page elsewhere."""
    status = STATUS[error.code]
    if wants_json(request):
        return JsonResponse(error_body(error), status=status)
    return render(request, "error.html", {"status": status, "code": str(error.code), "message": error.message},
                  status=status)


_BATCH_PATHS = re.compile(r"/api/v1/(events/batch|reservations/[^/]+/settle)")


def body_limit(path: str) -> int:
    """The largest body ``path`` takes: a batch as large as the contract allows, anything else less."""
    if _BATCH_PATHS.fullmatch(path):
        return batch_max_bytes(settings.TOLLGATE_BATCH_MAX)
    return int(settings.TOLLGATE_BODY_MAX_BYTES)


def too_large(request: HttpRequest, limit: int) -> HttpResponse:
    return answer(request, DomainError(CommonCode.PAYLOAD_TOO_LARGE,
                                       f"The body is larger than this endpoint takes ({limit} bytes)."))


def _hostile_part(request: HttpRequest) -> str | None:
    """Where the request holds a NUL character (or text that is not Unicode): ``path``, a query parameter's
    name (``query`` when the name itself is bad), ``headers`` or ``cookies``; None when nowhere."""
    if text_problem(request.path):
        return "path"
    bad = [name for name, values in request.GET.lists() if text_problem(name) or any(map(text_problem, values))]
    if bad:
        return "query" if text_problem(bad[0]) else bad[0]
    if any(key.startswith("HTTP_") and isinstance(value, str) and text_problem(value) for key, value in request.META.items()):
        return "headers"  # the Authorization header's key prefix is looked up, for one
    if any(text_problem(name) or text_problem(value) for name, value in request.COOKIES.items()):
        return "cookies"  # the session cookie is looked up
    return None


class HostileRequestMiddleware:
    """Before any view: a body longer than its path takes is 413 (nothing reads it), and a NUL character in
    the path, the query string, a header or a cookie is 400: PostgreSQL refuses it in any query (a 500),
    and no id, key, parameter or session of ours may hold one."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = body_limit(request.path)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:  # Django reads such a body as empty
            length = 0
        if length > limit:
            return too_large(request, limit)
        where = _hostile_part(request)
        if where is None:
            return self.get_response(request)
        # the error page must not look the hostile session up either: an empty one instead (and its cookie dropped)
        request.user = AnonymousUser()
        request.session = import_module(settings.SESSION_ENGINE).SessionStore()
        return answer(request, DomainError(CommonCode.INVALID_REQUEST, "The request holds a NUL character or invalid "
                                           "text.", {where: ["Must not contain a NUL character."]}))
