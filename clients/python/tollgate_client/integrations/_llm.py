"""What the LLM-client wrappers share: who is billed, the worst case to reserve, and turning a response's token
counts into two events (input and output) on one meter, tracked or settled against the reservation."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core import new_id
from ..aio import AsyncTollgate
from ..client import Tollgate
from ..errors import APIError, TollgateUnavailable

log = logging.getLogger("tollgate_client")

DEFAULT_MAX_TOKENS = 4096  # the output bound reserved when a request names none
Reserve = bool | int | Callable[[Mapping[str, Any]], int] | None


_CALL: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar("tollgate_call", default=(None, None))


@contextlib.contextmanager
def billing_context(*, customer: str | None = None, run_id: str | None = None) -> Iterator[None]:
    """Who the wrapped clients' calls inside bill, and their run: ``with billing_context(customer="acme-co",
    run_id="r1"): client.chat.completions.create(...)``. Works across threads' and tasks' own contexts."""
    token = _CALL.set((customer, run_id))
    try:
        yield
    finally:
        _CALL.reset(token)


@dataclass(frozen=True)
class Usage:
    model: str
    input_tokens: int
    output_tokens: int


@dataclass
class Metering:
    """How a wrapped client bills: ``customer``, the ``meter``, the ``run_id`` put in ``trace`` (per call:
    ``billing_context(...)``, or the ``tollgate_customer=`` / ``tollgate_run_id=`` keywords), and ``reserve``:
    False/None (only track), True (reserve an estimate: prompt characters / 2 + max_tokens), an int, or a
    callable of the request."""

    tollgate: Tollgate | AsyncTollgate
    customer: str | None = None
    meter: str = "llm_tokens"
    provider: str = "openai"
    run_id: str | None = None
    reserve: Reserve = None
    dimensions: Mapping[str, str] = field(default_factory=dict)
    fail_open: bool = True  # Tollgate unreachable: the call goes ahead and its usage is queued as events

    def call_options(self, kwargs: dict[str, Any]) -> tuple[str, str | None]:
        """Pop the per-call options from the request's kwargs: (customer, run_id)."""
        context_customer, context_run = _CALL.get()
        customer = kwargs.pop("tollgate_customer", None) or context_customer or self.customer
        run_id = kwargs.pop("tollgate_run_id", None) or context_run or self.run_id
        if not customer:
            raise ValueError("no customer: give customer= to the wrapper, or use billing_context(customer=...)")
        return customer, run_id

    def reserve_quantity(self, request: Mapping[str, Any]) -> int | None:
        if self.reserve is None or self.reserve is False:
            return None
        if self.reserve is True:
            return estimate_tokens(request)
        if callable(self.reserve):
            return int(self.reserve(request))
        return int(self.reserve)

    def events(self, usage: Usage, run_id: str | None) -> list[dict[str, Any]]:
        out = []
        for direction, tokens in (("input", usage.input_tokens), ("output", usage.output_tokens)):
            if tokens <= 0:
                continue
            event: dict[str, Any] = {"meter": self.meter, "quantity": tokens, "dimensions": {
                **self.dimensions, "model": usage.model, "direction": direction, "provider": self.provider}}
            if run_id:
                event["trace"] = {"run_id": run_id}
            out.append(event)
        return out


def estimate_tokens(request: Mapping[str, Any]) -> int:
    """A generous bound: every two characters of the prompt a token, plus the output bound."""
    prompt = {k: v for k, v in request.items() if k in ("messages", "input", "system", "prompt", "tools")}
    text = json.dumps(prompt, default=str)
    bound = request.get("max_completion_tokens") or request.get("max_tokens") or DEFAULT_MAX_TOKENS
    return len(text) // 2 + int(bound)


def _events(metering: Metering, usage: Usage | None, run_id: str | None) -> list[dict[str, Any]]:
    """The call's events, their ids fixed now: a settle that fails over to track() sends the same ids."""
    events = metering.events(usage, run_id) if usage is not None else []
    for event in events:
        event["event_id"] = new_id()
    return events


def _settle_failed(metering: Metering, exc: Exception, events: list[dict[str, Any]]) -> bool:
    """After the provider answered, a failed settle must not lose its answer: True to track the events instead."""
    if isinstance(exc, TollgateUnavailable) and not metering.fail_open:
        raise exc
    if isinstance(exc, TollgateUnavailable):
        log.warning("tollgate: settle failed (%s): the usage is queued as events, the hold expires", exc)
        return bool(events)
    log.warning("tollgate: the settle was refused: %s", exc)  # the server kept the events as not billable
    return False


def track_usage(metering: Metering, customer: str, run_id: str | None, usage: Usage | None, reservation: Any) -> None:
    """Sync: settle the reservation with the usage (or release it when none is known), else track the events."""
    events = _events(metering, usage, run_id)
    if reservation is not None:
        try:
            if events:
                reservation.settle(events=events)
            else:
                reservation.release()
            return
        except (TollgateUnavailable, APIError) as exc:
            if not _settle_failed(metering, exc, events):
                return
    if usage is None:
        log.warning("tollgate: no usage in the response: nothing tracked")
        return
    tg = metering.tollgate
    assert isinstance(tg, Tollgate), "a sync client needs a sync Tollgate"
    for event in events:
        tg.track(customer=customer, **event)


async def atrack_usage(metering: Metering, customer: str, run_id: str | None, usage: Usage | None,
                       reservation: Any) -> None:
    """Async: the same, awaiting AsyncTollgate (a sync Tollgate also works: its track() does not block)."""
    events = _events(metering, usage, run_id)
    if reservation is not None:
        try:
            if events:
                await maybe_await(reservation.settle(events=events))
            else:
                await maybe_await(reservation.release())
            return
        except (TollgateUnavailable, APIError) as exc:
            if not _settle_failed(metering, exc, events):
                return
    if usage is None:
        log.warning("tollgate: no usage in the response: nothing tracked")
        return
    for event in events:
        await maybe_await(metering.tollgate.track(customer=customer, **event))


def release_quietly(reservation: Any) -> None:
    """The call failed: give the hold back, never hiding the call's own error (an unreleased hold expires)."""
    try:
        reservation.release()
    except Exception:
        log.exception("tollgate: releasing reservation %s failed (it expires by itself)", reservation.id)


async def arelease_quietly(reservation: Any) -> None:
    try:
        await maybe_await(reservation.release())
    except Exception:
        log.exception("tollgate: releasing reservation %s failed (it expires by itself)", reservation.id)


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def reserve_sync(metering: Metering, customer: str, request: Mapping[str, Any]) -> Any:
    """The reservation before the call (LimitExceeded stops it before the upstream is paid), or None (none
    asked, or Tollgate unreachable and ``fail_open``: the call goes ahead and its usage is tracked)."""
    quantity = metering.reserve_quantity(request)
    if quantity is None:
        return None
    tg = metering.tollgate
    assert isinstance(tg, Tollgate), "a sync client needs a sync Tollgate"
    try:
        return tg.reserve(customer=customer, meter=metering.meter, quantity=quantity)
    except TollgateUnavailable:
        if not metering.fail_open:
            raise
        log.warning("tollgate: unreachable, the call goes ahead unreserved (its usage is tracked)")
        return None


async def reserve_async(metering: Metering, customer: str, request: Mapping[str, Any]) -> Any:
    quantity = metering.reserve_quantity(request)
    if quantity is None:
        return None
    try:
        return await maybe_await(metering.tollgate.reserve(customer=customer, meter=metering.meter, quantity=quantity))
    except TollgateUnavailable:
        if not metering.fail_open:
            raise
        log.warning("tollgate: unreachable, the call goes ahead unreserved (its usage is tracked)")
        return None


class Passthrough:
    """Delegates every attribute it does not define to the wrapped object."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


class MeteredStream(Passthrough):
    """Passes a sync stream's items through, reads usage from them, and bills once when it ends or is closed."""

    def __init__(self, stream: Any, read: Callable[[Any, dict[str, Any]], None],
                 finish: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(stream)
        self._iter = iter(stream)
        self._read = read
        self._finish = finish
        self._seen: dict[str, Any] = {}
        self._done = False

    def __iter__(self) -> MeteredStream:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._iter)
        except StopIteration:
            self._end()
            raise
        except BaseException:
            self._end()
            raise
        self._read(item, self._seen)
        return item

    def _end(self) -> None:
        if not self._done:
            self._done = True
            self._finish(self._seen)

    def close(self) -> None:
        try:
            self._wrapped.close()
        finally:
            self._end()

    def __enter__(self) -> MeteredStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncMeteredStream(Passthrough):
    def __init__(self, stream: Any, read: Callable[[Any, dict[str, Any]], None],
                 finish: Callable[[dict[str, Any]], Any]) -> None:
        super().__init__(stream)
        self._iter = stream.__aiter__()
        self._read = read
        self._finish = finish
        self._seen: dict[str, Any] = {}
        self._done = False

    def __aiter__(self) -> AsyncMeteredStream:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._iter.__anext__()
        except BaseException:
            await self._end()
            raise
        self._read(item, self._seen)
        return item

    async def _end(self) -> None:
        if not self._done:
            self._done = True
            await self._finish(self._seen)

    async def close(self) -> None:
        try:
            await self._wrapped.close()
        finally:
            await self._end()

    async def __aenter__(self) -> AsyncMeteredStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
