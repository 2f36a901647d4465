"""What the sync and async clients share: settings, building an event, reading an answer, backoff.
No I/O here, so both clients behave the same way."""

from __future__ import annotations

import email.utils
import itertools
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Literal

from .errors import APIError, EventError

Overflow = Literal["block", "drop", "spool"]
Quantity = int | str | Decimal | float
ErrorCallback = Callable[[EventError], None]

EVENTS_BATCH_PATH = "/api/v1/events/batch"
RESERVATIONS_PATH = "/api/v1/reservations"
MAX_BATCH = 1000
# per-event codes whose contract status is 5xx or 429: the event is sent again, with the same event_id
RETRYABLE_CODES = frozenset({"ledger_unavailable", "rate_limited", "internal_error"})


@dataclass(frozen=True)
class Settings:
    """The knobs of a client (see README: batching, retries, back-pressure)."""

    base_url: str
    api_key: str
    batch_size: int = 500
    flush_interval: float = 1.0  # seconds an event may wait for its batch to fill
    max_queue: int = 10_000
    overflow: Overflow = "block"
    block_timeout: float | None = None  # `block`: wait at most this long, then drop (None: wait for ever)
    spool_path: str | None = None
    max_spool: int = 1_000_000
    timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_attempts: int = 5  # for calls made on the caller's thread (reserve, settle, reads); the emitter never gives up
    close_timeout: float = 10.0
    in_flight: int = 2  # batches sent at once (sender threads): one is encoded and read while another is at the server


def make_settings(base_url: str | None, api_key: str | None, **options: Any) -> Settings:
    url = base_url or os.environ.get("TOLLGATE_URL")
    key = api_key or os.environ.get("TOLLGATE_API_KEY")
    if not url:
        raise ValueError("Tollgate needs base_url (or TOLLGATE_URL)")
    if not key:
        raise ValueError("Tollgate needs api_key (or TOLLGATE_API_KEY)")
    settings = Settings(base_url=url.rstrip("/"), api_key=key, **options)
    if not 1 <= settings.batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be 1 to {MAX_BATCH}")
    if settings.in_flight < 1:
        raise ValueError("in_flight must be at least 1")
    if settings.overflow not in ("block", "drop", "spool"):
        raise ValueError("overflow must be 'block', 'drop' or 'spool'")
    if settings.overflow == "spool" and not settings.spool_path:
        raise ValueError("overflow='spool' needs spool_path")
    if settings.spool_path and settings.overflow != "spool":
        settings = Settings(**{**settings.__dict__, "overflow": "spool"})
    return settings


class _IdSource:
    """Event and reservation ids: 96 random bits drawn once per process, then a counter (a fifth of a uuid4's
    cost on the caller's thread). A forked child draws new bits, so two workers never share a prefix."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = os.urandom(12).hex()
        self.counter = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):08x}"


_IDS = _IdSource()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_IDS.reseed)


new_id = _IDS.next  # a bound method: one call less on track()'s path


def quantity_text(quantity: Quantity) -> str:
    """Exact decimal text: never a float's binary noise (0.1 is sent as "0.1")."""
    if type(quantity) is int:  # the common case first (a bool is not one: its type is bool)
        return str(quantity)
    if isinstance(quantity, bool):
        raise TypeError("quantity must be a number or a decimal string")
    if isinstance(quantity, float):
        return str(Decimal(repr(quantity)))
    if isinstance(quantity, int | Decimal):
        return str(quantity)
    return str(Decimal(quantity))  # a string: checked here, sent as given


def utc_now_text() -> str:
    return datetime.now(timezone.utc).isoformat()


_SECOND: tuple[int, str] = (-1, "")  # the last whole second written out, and its text


def clock_text(value: float) -> str:
    """A clock reading (seconds since the epoch) as RFC 3339 UTC with microseconds, as ``isoformat`` writes
    it; the date and time of day are formatted once per second (a batch's events share their seconds)."""
    global _SECOND
    second = math.floor(value)
    micro = int((value - second) * 1_000_000)
    cached = _SECOND
    if cached[0] != second:
        cached = _SECOND = (second, datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{micro:06d}+00:00"


def timestamp_text(value: datetime | str | float | None) -> str:
    if value is None:
        return utc_now_text()
    if isinstance(value, float):
        return clock_text(value)
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    return value.isoformat()


def build_event(*, customer: str, meter: str, quantity: Quantity | None = None, event_id: str | None = None,
                timestamp: datetime | str | None = None, project: str | None = None,
                dimensions: Mapping[str, str] | None = None, trace: Mapping[str, Any] | None = None,
                billable: bool | None = None, reason: str | None = None, corrects: str | None = None) -> dict[str, Any]:
    """The event body as the API takes it. The event_id is fixed here, once: every retry sends the same one.
    Without a timestamp, the clock is read now and written out as text by ``finalize`` (off the caller's thread)."""
    if not customer or not meter:
        raise ValueError("customer and meter are required")
    event: dict[str, Any] = {"event_id": event_id or new_id(), "customer": customer, "meter": meter,
                             "timestamp": time.time() if timestamp is None else timestamp_text(timestamp)}
    if quantity is not None:
        event["quantity"] = str(quantity) if type(quantity) is int else quantity_text(quantity)
    if project is not None:
        event["project"] = project
    if dimensions:
        event["dimensions"] = dict(dimensions)
    if trace:
        event["trace"] = dict(trace)
    if billable is not None:
        event["billable"] = billable
    if reason is not None:
        event["reason"] = reason
    if corrects is not None:
        event["corrects"] = corrects
    return event


def finalize(event: dict[str, Any]) -> dict[str, Any]:
    """The event as sent: a clock reading becomes RFC 3339 text, once (so every retry sends the same text)."""
    stamp = event.get("timestamp")
    if type(stamp) is float:
        event["timestamp"] = clock_text(stamp)
    return event


def backoff_delay(attempt: int, settings: Settings, retry_after: float | None = None) -> float:
    """Exponential with full jitter; a server's Retry-After is a floor."""
    ceiling = min(settings.backoff_max, settings.backoff_base * (2 ** min(attempt, 30)))
    delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not a secret)
    return max(delay, retry_after) if retry_after is not None else delay


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds or as an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def json_or_none(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


@dataclass
class BatchOutcome:
    """How one batch answer splits: events done, events to send again, events refused for good."""

    done: list[int]
    retry: list[int]
    errors: list[tuple[int, EventError]]


def read_batch_results(positions: list[int], events: list[dict[str, Any]], body: Any) -> BatchOutcome:
    """Read a 200 batch answer: accepted and duplicate are done; retryable codes go again; others are final."""
    outcome = BatchOutcome([], [], [])
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != len(positions):
        outcome.retry = list(positions)  # an answer we cannot read: sending again is safe (same event_ids)
        return outcome
    for position, event, result in zip(positions, events, results, strict=True):
        status = result.get("status") if isinstance(result, dict) else None
        if status in ("accepted", "duplicate"):
            outcome.done.append(position)
            continue
        error = result.get("error") if isinstance(result, dict) else None
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code") or "rejected")
        if code in RETRYABLE_CODES:
            outcome.retry.append(position)
            continue
        outcome.errors.append((position, event_error(event, error, code)))
    return outcome


def event_error(event: dict[str, Any], error: Mapping[str, Any], code: str, status: int | None = None) -> EventError:
    fields = error.get("fields")
    return EventError(event, code, str(error.get("message") or code), status=status,
                      fields=fields if isinstance(fields, dict) else None,
                      details={k: v for k, v in error.items() if k not in {"code", "message", "fields"}})


def request_error(status: int, body: Any, events: list[dict[str, Any]]) -> list[EventError]:
    """A final refusal of the whole request (401, 403, 400, 422...): one EventError per event."""
    err = APIError.from_body(status, body)
    return [EventError(e, err.code, err.message, status=status, fields=err.fields, details=err.details) for e in events]


_dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def encode_batch(positions: list[int], events: list[dict[str, Any]]) -> tuple[list[int], bytes, list[EventError]]:
    """The batch body, leaving out (and reporting) any event JSON cannot encode: one bad value in a ``trace``
    must not block every event behind it. Returns the positions sent, the body, the errors."""
    for i in positions:
        finalize(events[i])
    try:  # compact, and no circular check: an event is plain data the SDK built (a cycle fails it anyway)
        return positions, _dumps({"events": [events[i] for i in positions]}).encode(), []
    except (TypeError, ValueError):
        pass
    good, errors = [], []
    for i in positions:
        try:
            json.dumps(events[i])
            good.append(i)
        except (TypeError, ValueError) as exc:
            errors.append(EventError(events[i], "invalid_event", f"The event cannot be encoded as JSON: {exc}"))
    return good, json.dumps({"events": [events[i] for i in good]}).encode(), errors


def auth_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.api_key}", "User-Agent": "tollgate-client-python",
            "Content-Type": "application/json"}
