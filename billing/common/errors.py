"""The domain's one error: a code, a human sentence and, for validation, the offending fields.

Services and selectors raise ``DomainError(<App>Code.X, ...)``; each app lists its codes in
``billing/<app>/errors.py``. Nothing here knows HTTP: the web face maps each code to its status
(``portal.errors.STATUS``) and answers ``{"error": error.as_dict()}`` (contract.md, "Errors").
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import Any

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10: the same behaviour for what we use (the value as the string)
    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


class ErrorCode(StrEnum):
    """Base of every app's error codes: each member's value is the public ``code``; append only."""


class CommonCode(ErrorCode):
    """Codes no single app owns: request shape, authentication, lookups, idempotency, infrastructure."""

    INVALID_JSON = "invalid_json"
    INVALID_SHAPE = "invalid_shape"
    INVALID_REQUEST = "invalid_request"
    NOT_AUTHENTICATED = "not_authenticated"
    INVALID_API_KEY = "invalid_api_key"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    ALREADY_EXISTS = "already_exists"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    VALIDATION_ERROR = "validation_error"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    PERIOD_CLOSED = "period_closed"  # an event or a subscription dated in a period already closed and invoiced
    INTERNAL_ERROR = "internal_error"
    LEDGER_UNAVAILABLE = "ledger_unavailable"
    UNAVAILABLE = "unavailable"


class DomainError(Exception):
    """Raise from any service or selector; ``extra`` adds keys beside code and message (a 402's
    ``remaining`` and ``unit``)."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        fields: dict[str, list[str]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields
        self.extra = extra or {}

    def as_dict(self) -> dict[str, Any]:
        """The inside of the error body: ``code``, ``message``, ``fields`` when given, then ``extra``."""
        error: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        error.update(self.extra)
        return error

    def __repr__(self) -> str:
        return f"DomainError({str(self.code)!r}, {self.message!r})"


def validation_error(fields: dict[str, list[str]], message: str = "The request is not valid.") -> DomainError:
    return DomainError(CommonCode.VALIDATION_ERROR, message, fields=fields)
