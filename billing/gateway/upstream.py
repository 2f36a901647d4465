"""The upstream LLM API (OpenAI-compatible): one pooled httpx client per process, its base URL and key
from ``GATEWAY_UPSTREAM_URL`` and ``GATEWAY_UPSTREAM_KEY``."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from django.conf import settings

_client: httpx.Client | None = None
_lock = threading.Lock()


def client() -> httpx.Client:
    """The process's client (connection pooling across requests and threads)."""
    global _client
    with _lock:
        if _client is None:
            timeout = httpx.Timeout(settings.GATEWAY_TIMEOUT_SECONDS, connect=10.0)
            _client = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=200,
                                                                         max_keepalive_connections=50))
        return _client


def send(path: str, body: dict[str, Any], *, stream: bool) -> httpx.Response:
    """POST ``body`` to the upstream's ``path``; a streamed response must be closed by the caller."""
    if not settings.GATEWAY_UPSTREAM_URL:
        raise httpx.ConnectError("GATEWAY_UPSTREAM_URL is not set")
    headers = {"Content-Type": "application/json"}
    if settings.GATEWAY_UPSTREAM_KEY:
        headers["Authorization"] = f"Bearer {settings.GATEWAY_UPSTREAM_KEY}"
    request = client().build_request("POST", settings.GATEWAY_UPSTREAM_URL.rstrip("/") + path, json=body,
                                     headers=headers)
    return client().send(request, stream=stream)


def reset() -> None:
    """Drop the pooled client (tests that change the upstream's settings)."""
    global _client
    with _lock:
        if _client is not None:
            _client.close()
        _client = None
