"""The synchronous client: ``track()`` queues and returns at once (a background thread sends), ``reserve()``,
``balance()`` and ``usage()`` call the API on the caller's thread with bounded retries."""

from __future__ import annotations

import atexit
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from ._core import (
    RESERVATIONS_PATH,
    ErrorCallback,
    Quantity,
    Settings,
    auth_headers,
    backoff_delay,
    build_event,
    is_retryable_status,
    json_or_none,
    make_settings,
    new_id,
    quantity_text,
    retry_after_seconds,
)
from ._emitter import Emitter, Stats
from ._reservation import Reservation, reservation_body
from .errors import APIError, TollgateUnavailable


class Tollgate:
    """``Tollgate(base_url=..., api_key=...)``, or TOLLGATE_URL / TOLLGATE_API_KEY from the environment.
    Options (README): batch_size, flush_interval, max_queue, overflow ("block" | "drop" | "spool"),
    block_timeout, spool_path, max_spool, timeout, backoff_base, backoff_max, max_attempts, close_timeout."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, on_error: ErrorCallback | None = None,
                 transport: httpx.BaseTransport | None = None, **options: Any) -> None:
        self.settings: Settings = make_settings(base_url, api_key, **options)
        self._http = httpx.Client(base_url=self.settings.base_url, headers=auth_headers(self.settings),
                                  timeout=self.settings.timeout, transport=transport)
        self._emitter = Emitter(self.settings, self._http, on_error)
        self._closed = False
        atexit.register(self.close)  # an open client is flushed at exit (close() unregisters it)

    # --- events -----------------------------------------------------------------------------------------
    def track(self, *, customer: str, meter: str, quantity: Quantity | None = None, event_id: str | None = None,
              timestamp: datetime | str | None = None, project: str | None = None,
              dimensions: Mapping[str, str] | None = None, trace: Mapping[str, Any] | None = None,
              billable: bool | None = None, reason: str | None = None, corrects: str | None = None) -> str:
        """Queue one usage event and return its event_id at once (the same id is sent on every retry).
        With overflow "drop" and a full queue the event is dropped (``stats.dropped``) and its id still returned."""
        if customer and meter and timestamp is None and project is None and billable is None and reason is None \
                and corrects is None:  # the usual event, built inline: build_event's call costs a tenth of track()
            event: dict[str, Any] = {"event_id": event_id or new_id(), "customer": customer, "meter": meter,
                                     "timestamp": time.time()}
            if quantity is not None:
                event["quantity"] = str(quantity) if type(quantity) is int else quantity_text(quantity)
            if dimensions:
                event["dimensions"] = dict(dimensions)
            if trace:
                event["trace"] = dict(trace)
        else:
            event = build_event(customer=customer, meter=meter, quantity=quantity, event_id=event_id,
                                timestamp=timestamp, project=project, dimensions=dimensions, trace=trace,
                                billable=billable, reason=reason, corrects=corrects)
        self._emitter.put(event)
        return str(event["event_id"])

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every event tracked so far has been answered for; False if ``timeout`` passed first."""
        return self._emitter.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued (up to ``timeout``, default ``close_timeout``), then stop. Called at exit too."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._emitter.close(self.settings.close_timeout if timeout is None else timeout)
        self._http.close()

    @property
    def stats(self) -> Stats:
        return self._emitter.stats

    def pending(self) -> int:
        """Events tracked and not yet answered for (in memory or in the spool)."""
        with self._emitter.cond:
            return self._emitter.store.pending()

    def __enter__(self) -> Tollgate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reservations and reads -------------------------------------------------------------------------
    def reserve(self, *, customer: str, meter: str, quantity: Quantity, ttl_seconds: int = 300,
                dimensions: Mapping[str, str] | None = None, reservation_id: str | None = None,
                project: str | None = None, run_id: str | None = None) -> Reservation:
        """Hold ``quantity`` before the work. Raises LimitExceeded (402). Use as a context manager."""
        body = reservation_body(customer=customer, meter=meter, quantity=quantity, ttl_seconds=ttl_seconds,
                                dimensions=dimensions, reservation_id=reservation_id, project=project,
                                run_id=run_id)
        answer = self.request("POST", RESERVATIONS_PATH, body)
        return Reservation(self.request, answer, body)

    def balance(self, customer: str) -> dict[str, Any]:
        """Credits, quotas and spend cap of the open period (``GET /customers/{id}/balance``)."""
        answer: dict[str, Any] = self.request("GET", f"/api/v1/customers/{customer}/balance")
        return answer

    def usage(self, customer: str, *, start: datetime | str | None = None, end: datetime | str | None = None,
              meter: str | None = None, group_by: str | list[str] | None = None,
              granularity: str | None = None) -> dict[str, Any]:
        """Aggregated usage (``GET /customers/{id}/usage``): ``{"data": [{"meter", "start", "end", "group", "quantity"}]}``."""
        answer: dict[str, Any] = self.request("GET", f"/api/v1/customers/{customer}/usage",
                                              params=usage_params(start, end, meter, group_by, granularity))
        return answer

    def request(self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None) -> Any:
        """One API call, retried on connection errors, 5xx and 429 (``max_attempts``): only for idempotent calls."""
        failure = "no attempt"
        for attempt in range(self.settings.max_attempts):
            retry_after = None
            try:
                response = self._http.request(method, path, json=body, params=params)
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 300:
                    return json_or_none(response)
                if not is_retryable_status(response.status_code):
                    raise APIError.from_body(response.status_code, json_or_none(response))
                failure = f"HTTP {response.status_code}"
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if attempt + 1 < self.settings.max_attempts:
                time.sleep(backoff_delay(attempt, self.settings, retry_after))
        raise TollgateUnavailable(f"{method} {path}: {failure} after {self.settings.max_attempts} attempts")


def usage_params(start: datetime | str | None, end: datetime | str | None, meter: str | None,
                 group_by: str | list[str] | None, granularity: str | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in (("start", start), ("end", end)):
        if value is not None:
            params[name] = value if isinstance(value, str) else value.isoformat()
    if meter:
        params["meter"] = meter
    if group_by:
        params["group_by"] = group_by if isinstance(group_by, str) else ",".join(group_by)
    if granularity:
        params["granularity"] = granularity
    return params
