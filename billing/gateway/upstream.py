"""The upstream LLM API (OpenAI-compatible): one pooled httpx client per process (the sync views), and one
async client per event loop (the async views: a client's connections belong to the loop that opened them;
under an ASGI server that is one loop per worker), its base URL and key from ``GATEWAY_UPSTREAM_URL`` and
``GATEWAY_UPSTREAM_KEY``."""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

import httpx
from django.conf import settings

_client: httpx.Client | None = None
_lock = threading.Lock()
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


def _options() -> dict[str, Any]:
    return {"timeout": httpx.Timeout(settings.GATEWAY_TIMEOUT_SECONDS, connect=10.0),
            "limits": httpx.Limits(max_connections=200, max_keepalive_connections=50)}


def client() -> httpx.Client:
    """The process's client (connection pooling across requests and threads)."""
    global _client
    with _lock:
        if _client is None:
            _client = httpx.Client(**_options())
        return _client


def async_client() -> httpx.AsyncClient:
    """The running loop's client (connection pooling across the requests that loop serves)."""
    loop = asyncio.get_running_loop()
    found = _async_clients.get(loop)
    if found is None:
        found = _async_clients[loop] = httpx.AsyncClient(**_options())
    return found


def _request(http: httpx.Client | httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Request:
    if not settings.GATEWAY_UPSTREAM_URL:
        raise httpx.ConnectError("GATEWAY_UPSTREAM_URL is not set")
    headers = {"Content-Type": "application/json"}
    if settings.GATEWAY_UPSTREAM_KEY:
        headers["Authorization"] = f"Bearer {settings.GATEWAY_UPSTREAM_KEY}"
    return http.build_request("POST", settings.GATEWAY_UPSTREAM_URL.rstrip("/") + path, json=body, headers=headers)


def send(path: str, body: dict[str, Any], *, stream: bool) -> httpx.Response:
    """POST ``body`` to the upstream's ``path``; a streamed response must be closed by the caller."""
    http = client()
    return http.send(_request(http, path, body), stream=stream)


async def send_async(path: str, body: dict[str, Any], *, stream: bool) -> httpx.Response:
    """``send``, awaited on the running loop's client."""
    http = async_client()
    return await http.send(_request(http, path, body), stream=stream)


def reset() -> None:
    """Drop the pooled client (tests that change the upstream's settings)."""
    global _client
    with _lock:
        if _client is not None:
            _client.close()
        _client = None
    _async_clients.clear()  # their loops close them, or they are collected with them
