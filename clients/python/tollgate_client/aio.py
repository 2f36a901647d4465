"""AsyncTollgate: the same methods as Tollgate, as coroutines, on one event loop. Its sender is an asyncio task
(started by the first ``track()``), the queue and the spool are the sync client's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from ._core import (
    EVENTS_BATCH_PATH,
    RESERVATIONS_PATH,
    ErrorCallback,
    Quantity,
    Settings,
    auth_headers,
    backoff_delay,
    build_event,
    encode_batch,
    is_retryable_status,
    json_or_none,
    make_settings,
    read_batch_results,
    request_error,
    retry_after_seconds,
)
from ._emitter import Stats, give_up, report
from ._reservation import AsyncReservation, PendingReservation, reservation_body
from ._store import open_store
from .client import usage_params
from .errors import APIError, TollgateUnavailable

log = logging.getLogger("tollgate_client")


class AsyncTollgate:
    """``async with AsyncTollgate(...) as tg: await tg.track(...)``. Call ``await tg.close()`` before the loop ends
    (``async with`` does): a coroutine cannot run at interpreter exit, so there is no atexit flush here."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, on_error: ErrorCallback | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, **options: Any) -> None:
        self.settings: Settings = make_settings(base_url, api_key, **options)
        self._http = httpx.AsyncClient(base_url=self.settings.base_url, headers=auth_headers(self.settings),
                                       timeout=self.settings.timeout, transport=transport)
        self.on_error = on_error
        self.stats = Stats()
        self._store = open_store(self.settings.spool_path, self.settings.max_queue, self.settings.max_spool)
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # set whenever events were answered for (room in the queue, flush)
        self._abort = asyncio.Event()
        self._closing = False
        self._flush_upto = 0
        self._done_upto = 0
        self._in_hand: list[int] = []  # the seqs of the batch being sent
        self._task: asyncio.Task[None] | None = None

    # --- events -----------------------------------------------------------------------------------------
    async def track(self, *, customer: str, meter: str, quantity: Quantity | None = None, event_id: str | None = None,
                    timestamp: datetime | str | None = None, project: str | None = None,
                    dimensions: Mapping[str, str] | None = None, trace: Mapping[str, Any] | None = None,
                    billable: bool | None = None, reason: str | None = None, corrects: str | None = None) -> str:
        """Queue one event and return its event_id; waits only when the queue is full and overflow is "block"."""
        if self._closing:
            raise RuntimeError("this AsyncTollgate client is closed")
        event = build_event(customer=customer, meter=meter, quantity=quantity, event_id=event_id, timestamp=timestamp,
                            project=project, dimensions=dimensions, trace=trace, billable=billable, reason=reason,
                            corrects=corrects)
        self._ensure_started()
        seq = self._store.put(event)
        if seq is None and self.settings.overflow == "block":
            deadline = None if self.settings.block_timeout is None else time.monotonic() + self.settings.block_timeout
            while seq is None and not self._closing:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._progress.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), left)
                seq = self._store.put(event)
        if seq is None:
            self.stats.dropped += 1
        elif self._store.waiting() >= self.settings.batch_size:
            self._wake.set()
        return str(event["event_id"])

    async def flush(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        target = self._store.last_seq()
        self._flush_upto = max(self._flush_upto, target)
        if self._store.pending():
            self._ensure_started()
        self._wake.set()
        while self._done_upto < target and self._store.pending():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._progress.wait(), 1.0 if left is None else min(left, 1.0))
        return True

    async def close(self, timeout: float | None = None) -> None:
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        if self._task is None and self._store.pending():
            self._ensure_started()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.settings.close_timeout if timeout is None else timeout)
            except asyncio.TimeoutError:
                self._abort.set()
                await self._task
        self._store.close()
        await self._http.aclose()

    def pending(self) -> int:
        return self._store.pending()

    async def __aenter__(self) -> AsyncTollgate:
        if self._store.pending():
            self._ensure_started()  # a spool left by an earlier process: drain it now
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tollgate-emitter")

    # --- the sender task ---------------------------------------------------------------------------------
    async def _next_batch(self) -> list[tuple[int, dict[str, Any]]] | None:
        s = self.settings
        while True:
            waiting = self._store.waiting()
            urgent = self._closing or self._flush_upto > self._done_upto
            if waiting >= s.batch_size or (waiting and (urgent or self._store.oldest_age() >= s.flush_interval)):
                return self._store.take(s.batch_size)
            if self._closing and not waiting:
                return None
            self._wake.clear()
            wait = max(s.flush_interval - self._store.oldest_age(), 0.001) if waiting else None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _run(self) -> None:
        while True:
            try:
                if not await self._step():
                    return
            except Exception:  # a spool that cannot be read or written: keep trying, slowly
                log.exception("tollgate: the sender failed; retrying in 1 s")
                self._store.untake(self._in_hand)
                self._in_hand = []
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._abort.wait(), 1.0)
                if self._abort.is_set():
                    return

    async def _step(self) -> bool:
        """Send one batch; False when there is nothing more to do (closing, or aborted)."""
        batch = await self._next_batch()
        if batch is None:
            return False
        self._in_hand = [seq for seq, _ in batch]
        finished = await self._deliver([event for _, event in batch])
        if finished:
            self._store.ack([seq for seq, _ in batch])
            self._done_upto = max(self._done_upto, batch[-1][0])
        elif self.settings.spool_path:
            self._store.untake(self._in_hand)
        else:
            give_up(self._store, batch, self.stats, self.on_error)
        self._in_hand = []
        self._progress.set()
        return finished

    async def _deliver(self, events: list[dict[str, Any]]) -> bool:
        positions = list(range(len(events)))
        attempt = 0
        while True:
            positions, body, invalid = encode_batch(positions, events)
            if invalid:
                self.stats.failed += len(invalid)
                report(self.on_error, invalid)
                if not positions:
                    return True
            sending = [events[i] for i in positions]
            retry_after = None
            try:
                response = await self._http.post(EVENTS_BATCH_PATH, content=body)
            except Exception as exc:
                log.info("tollgate: batch of %d not sent (%s: %s); retrying", len(sending), type(exc).__name__, exc)
            else:
                if response.status_code == 200:
                    outcome = read_batch_results(positions, sending, json_or_none(response))
                    self.stats.delivered += len(outcome.done)
                    self.stats.failed += len(outcome.errors)
                    report(self.on_error, [error for _, error in outcome.errors])
                    positions = outcome.retry
                    if not positions:
                        return True
                elif is_retryable_status(response.status_code):
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                else:
                    errors = request_error(response.status_code, json_or_none(response), sending)
                    self.stats.failed += len(errors)
                    report(self.on_error, errors)
                    return True
            self.stats.retries += 1
            try:
                await asyncio.wait_for(self._abort.wait(), backoff_delay(attempt, self.settings, retry_after))
                return False
            except asyncio.TimeoutError:
                attempt += 1

    # --- reservations and reads -------------------------------------------------------------------------
    def reserve(self, *, customer: str, meter: str, quantity: Quantity, ttl_seconds: int = 300,
                dimensions: Mapping[str, str] | None = None, reservation_id: str | None = None,
                project: str | None = None, run_id: str | None = None) -> PendingReservation:
        """``async with tg.reserve(...) as r`` (or ``r = await tg.reserve(...)``). Raises LimitExceeded (402)."""
        body = reservation_body(customer=customer, meter=meter, quantity=quantity, ttl_seconds=ttl_seconds,
                                dimensions=dimensions, reservation_id=reservation_id, project=project,
                                run_id=run_id)

        async def make() -> AsyncReservation:
            answer = await self.request("POST", RESERVATIONS_PATH, body)
            return AsyncReservation(self.request, answer, body)

        return PendingReservation(make)

    async def balance(self, customer: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self.request("GET", f"/api/v1/customers/{customer}/balance")
        return answer

    async def usage(self, customer: str, *, start: datetime | str | None = None, end: datetime | str | None = None,
                    meter: str | None = None, group_by: str | list[str] | None = None,
                    granularity: str | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = await self.request("GET", f"/api/v1/customers/{customer}/usage",
                                                    params=usage_params(start, end, meter, group_by, granularity))
        return answer

    async def request(self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None) -> Any:
        failure = "no attempt"
        for attempt in range(self.settings.max_attempts):
            retry_after = None
            try:
                response = await self._http.request(method, path, json=body, params=params)
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
                await asyncio.sleep(backoff_delay(attempt, self.settings, retry_after))
        raise TollgateUnavailable(f"{method} {path}: {failure} after {self.settings.max_attempts} attempts")
