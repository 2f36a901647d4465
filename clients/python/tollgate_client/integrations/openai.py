"""Meter the official ``openai`` client: ``client = wrap_openai(OpenAI(), tg, customer="acme-co")``.
``client.chat.completions.create(...)`` and ``client.embeddings.create(...)`` (sync or async, streaming
included) then track each response's ``usage`` as two events (input and output tokens, ``dimensions.model``,
``direction``, ``provider``, ``trace.run_id``), or settle them against a reservation made before the call.
Every other attribute is the client's own. Per call: ``with billing_context(customer=..., run_id=...)``."""

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


def wrap_openai(client: Client, tollgate: Tollgate | AsyncTollgate, *, customer: str | None = None,
                meter: str = "llm_tokens", run_id: str | None = None, reserve: Reserve = None,
                dimensions: Mapping[str, str] | None = None, fail_open: bool = True) -> Client:
    """The same client, metered (an ``OpenAI`` or an ``AsyncOpenAI``; the type seen by your editor is kept)."""
    metering = Metering(tollgate, customer, meter, "openai", run_id, reserve, dict(dimensions or {}), fail_open)
    return cast(Client, _OpenAI(client, metering))


def _chat_usage(response: Any) -> Usage | None:
    usage = getattr(response, "usage", None)
    if usage is None:
        return None
    return Usage(str(response.model), int(usage.prompt_tokens or 0), int(getattr(usage, "completion_tokens", 0) or 0))


def _read_chunk(chunk: Any, seen: dict[str, Any]) -> None:
    if getattr(chunk, "model", None):
        seen["model"] = chunk.model
    if getattr(chunk, "usage", None) is not None:
        seen["usage"] = chunk.usage


def _stream_usage(seen: dict[str, Any]) -> Usage | None:
    usage = seen.get("usage")
    if usage is None:
        return None
    return Usage(str(seen.get("model", "")), int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0))


def _ask_for_usage(kwargs: dict[str, Any]) -> bool:
    """A stream sends its usage in a last chunk only when asked: ask. True when the caller had not asked, so
    that chunk (no choices) is kept from code that does not expect it."""
    options = dict(kwargs.get("stream_options") or {})
    hide = not options.get("include_usage")
    kwargs["stream_options"] = {**options, "include_usage": True}
    return hide


class _HidingUsageChunk(MeteredStream):
    def __next__(self) -> Any:
        chunk = super().__next__()
        while getattr(chunk, "usage", None) is not None and not getattr(chunk, "choices", None):
            chunk = super().__next__()
        return chunk


class _AsyncHidingUsageChunk(AsyncMeteredStream):
    async def __anext__(self) -> Any:
        chunk = await super().__anext__()
        while getattr(chunk, "usage", None) is not None and not getattr(chunk, "choices", None):
            chunk = await super().__anext__()
        return chunk


class _Create(Passthrough):
    """``chat.completions`` or ``embeddings``: ``create`` metered, the rest passed through."""

    def __init__(self, resource: Any, metering: Metering) -> None:
        super().__init__(resource)
        self._metering = metering
        self.create = self._acreate if inspect.iscoroutinefunction(inspect.unwrap(resource.create)) else self._create

    def _create(self, **kwargs: Any) -> Any:
        m = self._metering
        customer, run_id = m.call_options(kwargs)
        reservation = reserve_sync(m, customer, kwargs)
        stream = bool(kwargs.get("stream"))
        hide = _ask_for_usage(kwargs) if stream else False
        try:
            response = self._wrapped.create(**kwargs)
        except BaseException:
            if reservation is not None:
                release_quietly(reservation)
            raise
        if stream:
            kind = _HidingUsageChunk if hide else MeteredStream
            return kind(response, _read_chunk,
                        lambda seen: track_usage(m, customer, run_id, _stream_usage(seen), reservation))
        track_usage(m, customer, run_id, _chat_usage(response), reservation)
        return response

    async def _acreate(self, **kwargs: Any) -> Any:
        m = self._metering
        customer, run_id = m.call_options(kwargs)
        reservation = await reserve_async(m, customer, kwargs)
        stream = bool(kwargs.get("stream"))
        hide = _ask_for_usage(kwargs) if stream else False
        try:
            response = await self._wrapped.create(**kwargs)
        except BaseException:
            if reservation is not None:
                await arelease_quietly(reservation)
            raise
        if stream:
            kind = _AsyncHidingUsageChunk if hide else AsyncMeteredStream

            async def finish(seen: dict[str, Any]) -> None:
                await atrack_usage(m, customer, run_id, _stream_usage(seen), reservation)

            return kind(response, _read_chunk, finish)
        await atrack_usage(m, customer, run_id, _chat_usage(response), reservation)
        return response


class _Chat(Passthrough):
    def __init__(self, chat: Any, metering: Metering) -> None:
        super().__init__(chat)
        self.completions = _Create(chat.completions, metering)


class _OpenAI(Passthrough):
    def __init__(self, client: Any, metering: Metering) -> None:
        super().__init__(client)
        self.chat = _Chat(client.chat, metering)
        self.embeddings = _Create(client.embeddings, metering)
