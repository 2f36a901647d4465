"""Meter the official ``anthropic`` client: ``client = wrap_anthropic(Anthropic(), tg, customer="acme-co")``.
``client.messages.create(...)`` (sync or async, ``stream=True`` included: input tokens from ``message_start``,
output tokens from the last ``message_delta``) tracks two events like the OpenAI wrapper. Input tokens count
the cached ones too (``cache_creation_input_tokens`` + ``cache_read_input_tokens``). ``messages.stream()``
is passed through unmetered: use ``create(stream=True)``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from ..aio import AsyncTollgate
from ..client import Tollgate
from ._llm import (
    AsyncMeteredStream,
    MeteredStream,
    Metering,
    Passthrough,
    Reserve,
    Usage,
    arelease_quietly,
    atrack_usage,
    release_quietly,
    reserve_async,
    reserve_sync,
    track_usage,
)

Client = TypeVar("Client")


def wrap_anthropic(client: Client, tollgate: Tollgate | AsyncTollgate, *, customer: str | None = None,
                   meter: str = "llm_tokens", run_id: str | None = None, reserve: Reserve = None,
                   dimensions: Mapping[str, str] | None = None, fail_open: bool = True) -> Client:
    """The same client (``Anthropic`` or ``AsyncAnthropic``), metered."""
    metering = Metering(tollgate, customer, meter, "anthropic", run_id, reserve, dict(dimensions or {}), fail_open)
    return cast(Client, _Anthropic(client, metering))


def _input_tokens(usage: Any) -> int:
    return sum(int(getattr(usage, name, 0) or 0)
               for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))


def _message_usage(message: Any) -> Usage | None:
    usage = getattr(message, "usage", None)
    if usage is None:
        return None
    return Usage(str(message.model), _input_tokens(usage), int(usage.output_tokens or 0))


def _read_event(event: Any, seen: dict[str, Any]) -> None:
    kind = getattr(event, "type", None)
    if kind == "message_start":
        seen["model"] = event.message.model
        seen["input"] = _input_tokens(event.message.usage)
        seen["output"] = int(event.message.usage.output_tokens or 0)
    elif kind == "message_delta" and getattr(event, "usage", None) is not None:
        seen["output"] = int(event.usage.output_tokens or 0)  # cumulative
        if getattr(event.usage, "input_tokens", None):
            seen["input"] = _input_tokens(event.usage)
        seen["delta"] = True


def _stream_usage(seen: dict[str, Any]) -> Usage | None:
    if "model" not in seen:
        return None
    return Usage(str(seen["model"]), int(seen.get("input", 0)), int(seen.get("output", 0)))


class _Messages(Passthrough):
    def __init__(self, messages: Any, metering: Metering) -> None:
        super().__init__(messages)
        self._metering = metering
        self.create = self._acreate if inspect.iscoroutinefunction(inspect.unwrap(messages.create)) else self._create

    def _create(self, **kwargs: Any) -> Any:
        m = self._metering
        customer, run_id = m.call_options(kwargs)
        reservation = reserve_sync(m, customer, kwargs)
        try:
            response = self._wrapped.create(**kwargs)
        except BaseException:
            if reservation is not None:
                release_quietly(reservation)
            raise
        if kwargs.get("stream"):
            return MeteredStream(response, _read_event,
                                 lambda seen: track_usage(m, customer, run_id, _stream_usage(seen), reservation))
        track_usage(m, customer, run_id, _message_usage(response), reservation)
        return response

    async def _acreate(self, **kwargs: Any) -> Any:
        m = self._metering
        customer, run_id = m.call_options(kwargs)
        reservation = await reserve_async(m, customer, kwargs)
        try:
            response = await self._wrapped.create(**kwargs)
        except BaseException:
            if reservation is not None:
                await arelease_quietly(reservation)
            raise
        if kwargs.get("stream"):
            async def finish(seen: dict[str, Any]) -> None:
                await atrack_usage(m, customer, run_id, _stream_usage(seen), reservation)

            return AsyncMeteredStream(response, _read_event, finish)
        await atrack_usage(m, customer, run_id, _message_usage(response), reservation)
        return response


class _Anthropic(Passthrough):
    def __init__(self, client: Any, metering: Metering) -> None:
        super().__init__(client)
        self.messages = _Messages(client.messages, metering)
