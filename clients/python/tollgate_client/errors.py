"""What the client raises or reports: the API's error body (`{"error": {"code", "message", ...}}`) kept whole."""

from __future__ import annotations

from typing import Any

LIMIT_CODES = frozenset({"quota_exceeded", "spend_cap_exceeded", "insufficient_credits", "budget_exceeded",
                         "circuit_open", "paused"})


class TollgateError(Exception):
    """Base of everything this package raises."""


class TollgateUnavailable(TollgateError):
    """The server could not be reached, or kept failing (5xx, 429), for every attempt the call allowed."""


class APIError(TollgateError):
    """A final answer of the API other than 2xx: ``status``, the contract's ``code``, ``message``, ``fields``
    (validation) and ``details`` (every other key of the error body, e.g. ``remaining`` and ``unit`` on a 402)."""

    def __init__(self, status: int, code: str, message: str, fields: dict[str, Any] | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.details = details or {}

    @classmethod
    def from_body(cls, status: int, body: Any) -> APIError:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return APIError(status, "http_error", f"HTTP {status}")
        code = str(error.get("code") or "http_error")
        message = str(error.get("message") or f"HTTP {status}")
        fields = error.get("fields") if isinstance(error.get("fields"), dict) else None
        details = {k: v for k, v in error.items() if k not in {"code", "message", "fields"}}
        kind = LimitExceeded if status == 402 or code in LIMIT_CODES else APIError
        return kind(status, code, message, fields, details)


class LimitExceeded(APIError):
    """A 402: a hard limit, spend cap, credits, budget, circuit breaker or pause refused the call. ``code`` says
    which (``quota_exceeded``, ``spend_cap_exceeded``, ``insufficient_credits``, ``budget_exceeded``,
    ``circuit_open``, ``paused``); ``details`` carries ``remaining`` and ``unit`` when the server sends them."""


class EventError:
    """An event the server refused for good (or that could not be delivered before ``close()`` gave up):
    given to ``on_error``. ``status`` is the HTTP status when the whole request was refused, else None."""

    __slots__ = ("code", "details", "event", "fields", "message", "status")

    def __init__(self, event: dict[str, Any], code: str, message: str, *, status: int | None = None,
                 fields: dict[str, Any] | None = None, details: dict[str, Any] | None = None) -> None:
        self.event = event
        self.code = code
        self.message = message
        self.status = status
        self.fields = fields or {}
        self.details = details or {}

    @property
    def event_id(self) -> str:
        return str(self.event.get("event_id"))

    @property
    def is_limit(self) -> bool:
        return self.code in LIMIT_CODES

    def __repr__(self) -> str:
        return f"EventError(event_id={self.event_id!r}, code={self.code!r}, message={self.message!r})"
