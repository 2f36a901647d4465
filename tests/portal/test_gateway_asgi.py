"""The gateway served by the ASGI entry point (portal.asgi, as gunicorn's asgi worker or uvicorn serve it):
its async views, driven in process by the official ``openai`` async client, against the fake upstream on
loopback. The same promises as under WSGI (402 before the upstream, exact usage billed, errors passed through
and released, a client leaving mid-stream settles what was streamed), and calls waiting on a slow upstream
overlap without holding a thread each for the wait."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest
from django.urls import resolve
from openai.types.chat import ChatCompletionMessageParam

from billing.customers.services import api_key_create
from billing.guardrails.models import Reservation
from billing.usage.models import UsageEvent
from portal import gateway_async
from portal.asgi import application
from tests.portal import test_gateway as gateway

fake = gateway.fake  # the fake upstream

pytestmark = [pytest.mark.ledger, pytest.mark.django_db(transaction=True)]

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


def run_client(raw: str, work: Any) -> Any:
    """``work(client)`` with an AsyncOpenAI client whose transport is the ASGI application itself."""
    async def main() -> Any:
        transport = httpx2.ASGITransport(app=application)  # type: ignore[arg-type]  # Django's looser signature
        async with httpx2.AsyncClient(transport=transport, timeout=30) as http:  # the openai package's httpx
            client = openai.AsyncOpenAI(base_url="http://testserver/gateway/v1", api_key=raw, max_retries=0,
                                        http_client=http)
            return await work(client)

    return asyncio.run(main())


@pytest.fixture
def raw(acme: Any) -> str:
    gateway.subscribe(acme)
    return api_key_create(name="app", scope="gateway", customer=acme)[1]


def test_the_asgi_entry_serves_the_async_views_and_keeps_no_connection_past_a_request() -> None:
    from django.conf import settings

    assert resolve("/gateway/v1/chat/completions", urlconf="portal.urls_asgi").func is gateway_async.chat_completions
    assert asyncio.iscoroutinefunction(gateway_async.embeddings)
    # a request's database work runs in a thread of its own: a kept connection would outlive it and pile up
    assert {database["CONN_MAX_AGE"] for database in settings.DATABASES.values()} == {0}


# The ASGI entry point started as a server starts it (its own process, portal.asgi imported first), on the
# test database: ten API requests, one after the other, then the pool's counters.
POOL_PROBE = r"""
import asyncio, json, os, sys
from portal.asgi import application
import httpx
from django.db import connections

async def main():
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for _ in range(10):
            answer = await client.get("/api/v1/customers", headers={"Authorization": "Bearer " + sys.argv[1]})
            assert answer.status_code == 200, answer.text

asyncio.run(main())
pool = connections["default"].pool
print(json.dumps({"max_size": pool.max_size, "timeout": pool.timeout, "stats": pool.get_stats()}))
"""


@pytest.mark.postgres
def test_on_postgresql_the_asgi_entry_takes_connections_from_a_pool_and_gives_them_back() -> None:
    import os
    import subprocess

    from django.conf import settings

    database = settings.DATABASES["default"]
    url = f"postgres://{database['USER']}:{database['PASSWORD']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_POOL_SIZE", "DATABASE_POOL_TIMEOUT")}
    env.update(DATABASE_URL=url, DJANGO_SETTINGS_MODULE="portal.settings")
    _, admin = api_key_create(name="probe", scope="admin")
    done = subprocess.run([sys.executable, "-c", POOL_PROBE, admin], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["max_size"] == 10 and probe["timeout"] == 5  # portal.asgi's default, portal.settings' timeout
    stats = probe["stats"]
    # ten requests, each in a thread of its own, took a connection from the pool and gave it back: the pool's
    # first connection (min_size), perhaps one more opened while that one was still starting, and none left
    # checked out (without the pool: ten connections opened and closed)
    assert stats["requests_num"] >= 10
    assert 1 <= stats["connections_num"] <= 2
    assert stats["pool_size"] == stats["pool_available"] == stats["connections_num"]


DOWN_PROBE = r"""
import asyncio, json, time
from portal.asgi import application
import httpx

async def main():
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        began = time.monotonic()
        answer = await client.get("/api/v1/customers", headers={"Authorization": "Bearer tg_0123456789ab_x"})
        print(json.dumps({"status": answer.status_code, "body": answer.json(),
                          "retry_after": answer.headers.get("Retry-After"), "seconds": time.monotonic() - began}))

asyncio.run(main())
"""


def test_with_the_database_unreachable_a_request_waits_the_pool_timeout_then_answers_503() -> None:
    import os
    import socket
    import subprocess

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_POOL_SIZE"}
    env.update(DATABASE_URL=f"postgres://postgres@127.0.0.1:{port}/tollgate", DATABASE_POOL_TIMEOUT="1",
               DJANGO_SETTINGS_MODULE="portal.settings")
    done = subprocess.run([sys.executable, "-c", DOWN_PROBE], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["status"] == 503 and probe["body"]["error"]["code"] == "unavailable" and probe["retry_after"]
    assert 1 <= probe["seconds"] < 10


def test_whole_and_streamed_answers_bill_exactly_the_upstreams_usage(raw: str, fake: Any) -> None:
    async def work(client: openai.AsyncOpenAI) -> tuple[Any, str, Any]:
        whole = await client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=100,
                                                     extra_headers={"X-Tollgate-Run": "agent-9"})
        text = ""
        stream = await client.chat.completions.create(model="gpt-4o", messages=HI, stream=True)
        async for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
        embedded = await client.embeddings.create(model="text-embedding-3-small", input="hello")
        return whole, text, embedded

    whole, text, embedded = run_client(raw, work)
    assert whole.choices[0].message.content == "Hello there" and text == "one two three four"
    assert embedded.usage.prompt_tokens == 7
    events = {(e.dimensions["direction"], e.quantity, e.run_id) for e in UsageEvent.objects.all()}
    assert events == {("input", Decimal(11), "agent-9"), ("output", Decimal(5), "agent-9"),  # whole: its usage
                      ("input", Decimal(13), ""), ("output", Decimal(4), ""),  # the stream's usage chunk
                      ("input", Decimal(7), "")}
    assert fake.requests[1]["body"]["stream_options"] == {"include_usage": True}
    assert set(Reservation.objects.values_list("state", flat=True)) == {"settled"}


def test_over_the_limit_is_402_and_upstream_errors_pass_through_billing_nothing(acme: Any, fake: Any) -> None:
    gateway.subscribe(acme, hard="50")
    raw = api_key_create(name="app", scope="gateway", customer=acme)[1]

    async def work(client: openai.AsyncOpenAI) -> list[Any]:
        outcomes: list[Any] = []
        for mode, max_tokens in (("ok", 100), ("error", 10), ("slow", 10)):
            fake.mode = mode
            try:
                await client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=max_tokens)
            except openai.APIStatusError as exc:
                outcomes.append((exc.status_code, exc.body))
        return outcomes

    refused, failed, timed_out = run_client(raw, work)
    assert refused[0] == 402 and refused[1]["type"] == "insufficient_quota" and refused[1]["code"] == "quota_exceeded"
    assert failed == (500, {"message": "upstream broke", "type": "server_error"})
    assert timed_out[0] == 504 and timed_out[1]["code"] == "upstream_timeout"
    assert len(fake.requests) == 2  # the refused call never reached it
    assert UsageEvent.objects.count() == 0
    assert set(Reservation.objects.values_list("state", flat=True)) == {"released"}


def threads_in_sync_upstream_calls() -> int:
    """Threads of this process now inside the sync client's call to the upstream (blocked on it)."""
    count = 0
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code.co_name == "send" and frame.f_code.co_filename.endswith("billing/gateway/upstream.py"):
                count += 1
                break
            frame = frame.f_back  # type: ignore[assignment]
    return count


def test_calls_waiting_on_the_upstream_wait_together_and_hold_no_thread(raw: str, fake: Any, settings: Any) -> None:
    """Ten calls, the upstream taking 0.6 s each: they overlap, and while they wait no thread is blocked on
    the upstream (the sync views hold one per call for the whole wait)."""
    fake.mode, fake.slow_seconds, settings.GATEWAY_TIMEOUT_SECONDS = "slow", 0.6, 10
    blocked: list[int] = []

    async def work(client: openai.AsyncOpenAI) -> None:
        async def sample() -> None:
            while True:
                blocked.append(threads_in_sync_upstream_calls())
                await asyncio.sleep(0.02)

        watching = asyncio.create_task(sample())
        await asyncio.gather(*[client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=10)
                               for _ in range(10)])
        watching.cancel()

    run_client(raw, work)
    assert fake.most_waiting >= 5  # they overlapped at the upstream: not ten 0.6 s waits one after the other
    assert len(blocked) > 10 and max(blocked) == 0
    assert len(fake.requests) == 10 and UsageEvent.objects.filter(dimensions__direction="output").count() == 10


def test_a_client_leaving_mid_stream_settles_what_was_streamed(raw: str, fake: Any) -> None:
    """Driven as an ASGI server would: the client disconnects after ten chunks of a 200-word stream."""
    fake.mode = "long"
    body = json.dumps({"model": "gpt-4o", "messages": HI, "stream": True}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/gateway/v1/chat/completions", "raw_path": b"/gateway/v1/chat/completions", "query_string": b"",
             "root_path": "", "server": ("testserver", 80), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {raw}".encode())]}

    async def main() -> list[bytes]:
        chunks: list[bytes] = []
        left = asyncio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": body, "more_body": False}
            await left.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.append(message["body"])
                if len(chunks) >= 10:
                    left.set()

        await asyncio.wait_for(application(scope, receive, send), timeout=30)  # type: ignore[arg-type]
        return chunks

    chunks = asyncio.run(main())
    assert 10 <= len(chunks) < 150  # it stopped well before the 200 words
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not UsageEvent.objects.filter(dimensions__direction="output").exists():
        time.sleep(0.1)
    billed = {e.dimensions["direction"]: e.quantity for e in UsageEvent.objects.all()}
    assert billed["input"] > 0 and 0 < billed["output"] < 200  # what was streamed, not the worst case
    assert Reservation.objects.get().state == "settled"
