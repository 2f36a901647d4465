"""The gateway's views under ASGI (portal.asgi serves them in place of portal.gateway's): the same calls, but
the upstream is awaited, so a worker waiting seconds for an LLM holds no thread meanwhile; only the
database work (the key, the reservation, the settlement) runs in Django's thread for sync code.

Behaviour is portal.gateway's to the byte: 402 before the upstream, errors passed through and released, the
stream relayed line by line and settled before its ``[DONE]``, a client that leaves settles what was streamed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.gateway import metering, upstream
from portal import gateway


async def _in_thread(work: Callable[..., Any], *args: Any) -> Any:
    """Sync (database) work off the loop, finished even if the request is cancelled meanwhile (a client
    leaving mid-settle must not leave the reservation half closed)."""
    return await asyncio.shield(sync_to_async(work)(*args))


async def _proxy(request: HttpRequest, path: str, kind: str) -> HttpResponseBase:
    begun = await _in_thread(gateway.begin, request, kind)
    if isinstance(begun, JsonResponse):
        return begun
    call, body, stream = begun
    try:
        response = await upstream.send_async(path, body, stream=stream)
    except httpx.HTTPError as exc:
        return await _in_thread(gateway.unreachable, call, exc)
    if response.status_code >= 400 or not stream:
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return await _in_thread(gateway.answer, call, response, content)
    return StreamingHttpResponse(_relay(call, response), status=response.status_code,
                                 content_type=response.headers.get("content-type", "text/event-stream"))


async def _relay(call: metering.Call, response: httpx.Response) -> AsyncIterator[bytes]:
    meter = gateway.StreamMeter(call)
    try:
        async for line in response.aiter_lines():
            if meter.feed(line):
                await _in_thread(meter.settle)
            yield (line + "\n").encode()
    finally:
        await response.aclose()
        await _in_thread(meter.settle)


@csrf_exempt
@require_POST
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    return await _proxy(request, "/chat/completions", "chat")


@csrf_exempt
@require_POST
async def embeddings(request: HttpRequest) -> HttpResponseBase:
    return await _proxy(request, "/embeddings", "embeddings")
