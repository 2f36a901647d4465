"""One error shape for the whole API (contract.md, "Errors").

``{"error": {"code": "<snake_case>", "message": "<sentence>", "fields": {...}}}``
"""

from __future__ import annotations

import math
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class ApiError(exceptions.APIException):
    """Raise anywhere below a view to answer with the contract's error body."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        fields: dict[str, list[str]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.fields = fields
        self.extra = extra or {}


def error_body(code: str, message: str, fields: dict[str, list[str]] | None = None, **extra: Any) -> dict:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    error.update(extra)
    return {"error": error}


def validation_error(fields: dict[str, list[str]], message: str = "The request is not valid.") -> ApiError:
    return ApiError(status.HTTP_422_UNPROCESSABLE_ENTITY, "validation_error", message, fields=fields)


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


def exception_handler(exc: Exception, context: dict) -> Response | None:
    headers: dict[str, str] = {}
    if isinstance(exc, ApiError):
        body = error_body(exc.code, exc.message, exc.fields, **exc.extra)
        return Response(body, status=exc.status_code)
    from ledger.backends.base import LedgerUnavailable

    if isinstance(exc, LedgerUnavailable):
        return Response(error_body("ledger_unavailable", "The ledger did not answer; retry with the same ids."),
                        status=503, headers={"Retry-After": "1"})
    if isinstance(exc, DjangoValidationError):
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(error_body("validation_error", "The request is not valid.", fields), status=422)
    if isinstance(exc, Http404 | exceptions.NotFound):
        return Response(error_body("not_found", "Not found."), status=404)
    if isinstance(exc, exceptions.ParseError):
        return Response(error_body("invalid_json", f"The body is not valid JSON: {exc.detail}"), status=400)
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return Response(error_body("unsupported_media_type", str(exc.detail)), status=415)
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        response = drf_exception_handler(exc, context)
        if response is not None and "WWW-Authenticate" in response:
            headers["WWW-Authenticate"] = response["WWW-Authenticate"]
        code = "not_authenticated" if isinstance(exc, exceptions.NotAuthenticated) else "invalid_api_key"
        return Response(error_body(code, str(exc.detail)), status=401, headers=headers or None)
    if isinstance(exc, exceptions.PermissionDenied):
        return Response(error_body("forbidden", str(exc.detail)), status=403)
    if isinstance(exc, exceptions.Throttled):
        wait = math.ceil(getattr(exc, "wait", None) or 1)
        return Response(
            error_body("rate_limited", f"Too many requests; retry in {wait} s."),
            status=429,
            headers={"Retry-After": str(wait)},
        )
    if isinstance(exc, exceptions.MethodNotAllowed):
        return Response(error_body("method_not_allowed", str(exc.detail)), status=405)
    if isinstance(exc, exceptions.ValidationError):
        if exc.get_codes() == {"non_field_errors": ["invalid"]}:  # DRF: "Expected a dictionary, but got list"
            return Response(error_body("invalid_shape", "Expected a JSON object."), status=400)
        return Response(
            error_body("validation_error", "The request is not valid.", _flatten_fields(exc.detail)),
            status=422,
        )
    if isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        return Response(error_body(codes if isinstance(codes, str) else "error", str(exc.detail)), status=exc.status_code)
    return None
