"""The OpenAPI description of what every API answers on failure: the contract's error body, and the
statuses an operation may answer with it (``errors(402, 409)``). Descriptions only: nothing here runs on a
request (portal.openapi adds the statuses every operation shares)."""

from __future__ import annotations

from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema_field,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers

WHY = {
    400: "`invalid_json`, `invalid_shape` or `invalid_request` (a NUL character in the path, query or headers).",
    401: "`not_authenticated` (no key) or `invalid_api_key` (unknown, malformed or revoked).",
    402: "A hard limit would be exceeded: `quota_exceeded`, `spend_cap_exceeded`, `insufficient_credits`, "
         "`budget_exceeded`, `circuit_open` or `paused`; `remaining` and `unit` say what is left.",
    403: "`forbidden` (the key lacks the scope, or is restricted to a customer and this is not its to do), "
         "`customer_forbidden` or `pause_operator_only`.",
    404: "`not_found`: nothing of that id for this caller (another tenant's objects are never revealed); "
         "`no_subscription` where a plan is needed.",
    409: "A conflict with what is stored: `idempotency_conflict`, `already_exists`, or a state that does not "
         "allow the move.",
    413: "`payload_too_large`: the body is longer than this endpoint takes.",
    415: "`unsupported_media_type`: the body is not `application/json`.",
    422: "Well formed but invalid: `validation_error` with `fields`, or a reference to something unknown.",
    429: "`rate_limited`, with `Retry-After`.",
    503: "`unavailable` (the database) or `ledger_unavailable`, with `Retry-After`: nothing was stored; retry.",
}


@extend_schema_serializer(component_name="ErrorDetail")
class ErrorDetailDoc(serializers.Serializer):
    code = serializers.CharField(help_text="snake_case; each code has exactly one status")
    message = serializers.CharField(help_text="a human sentence")
    fields = serializers.DictField(  # type: ignore[assignment]  # the body's key is "fields"
        child=serializers.ListField(child=serializers.CharField()), required=False,
        help_text="validation only: a field name or path to its messages")
    remaining = serializers.CharField(required=False, help_text="402 only: what is left, a decimal string")
    unit = serializers.CharField(required=False, allow_blank=True, help_text="402 only: the meter's unit (empty for money)")


@extend_schema_serializer(component_name="Error", examples=[OpenApiExample("validation_error", value={
    "error": {"code": "validation_error", "message": "The request is not valid.",
              "fields": {"quantity": ["Quantity has more than 18 decimal places."]}}})])
class ErrorDoc(serializers.Serializer):
    """``{"error": {"code", "message", "fields"?}}`` (contract.md, "Errors")."""

    error = ErrorDetailDoc()


def error_response(status: int) -> OpenApiResponse:
    return OpenApiResponse(ErrorDoc, description=WHY[status])


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """``responses={201: Out, **errors(402, 409)}``: the error statuses an operation adds to the shared ones."""
    return {status: error_response(status) for status in statuses}


def data_list(name: str, item: serializers.Serializer | serializers.Field, **more: serializers.Field) -> serializers.Serializer:
    """A list answer, ``{"data": [item, ...]}`` plus ``more`` (``customer``, ``next_cursor``...)."""
    return inline_serializer(name, {**more, "data": serializers.ListField(child=item)})


class DecimalText(serializers.CharField):
    """A decimal as the API writes it: a canonical string (``"1200"``, ``"0.5"``), never a float."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("help_text", "a decimal string")
        super().__init__(**kwargs)  # type: ignore[arg-type]


@extend_schema_field({"oneOf": [{"type": "string", "example": "1200"}, {"type": "number"}],
                      "description": "a decimal, as a string or a number; read exactly, never as a float"})
class DecimalInput(serializers.CharField):
    """A decimal the API takes as a JSON string or number."""
