"""The openai and anthropic wrappers, with the official clients pointed at a fake provider (a real local HTTP
server): each response's usage becomes an input and an output event on the real API; a reservation refused
with 402 stops the call before the provider is contacted; a failed call bills nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest
from sdk_fakes import FaultProxy, Server
from sdk_upstream import CACHED, COMPLETION, PROMPT, FakeUpstream
from tollgate_client import AsyncTollgate, LimitExceeded, Tollgate, TollgateUnavailable
from tollgate_client.integrations import billing_context
from tollgate_client.integrations.anthropic import wrap_anthropic
from tollgate_client.integrations.openai import wrap_openai

FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_max": 0.2, "flush_interval": 0.05}
MESSAGES: Any = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture
def tg(server: Server) -> Iterator[Tollgate]:
    with Tollgate(base_url=server.url, api_key=server.admin_key, **FAST) as client:
        yield client


def billed(server: Server) -> list[tuple[str, str, str, str | None]]:
    """(direction, quantity, model, run_id) of every stored event, sorted."""
    rows = server.get("/api/v1/events", customer="acme-co", limit=1000)["data"]
    return sorted((e["dimensions"]["direction"], e["quantity"], e["dimensions"]["model"], (e["trace"] or {}).get("run_id"))
                  for e in rows if e["billable"])


def test_openai_chat_and_embeddings_bill_the_usage(server: Server, upstream: FakeUpstream, tg: Tollgate) -> None:
    client = wrap_openai(openai.OpenAI(api_key="sk-test", base_url=f"{upstream.url}/v1", max_retries=0), tg,
                         customer="acme-co", run_id="run-1")
    answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert answer.choices[0].message.content == "Hello there"
    with billing_context(run_id="run-2"):
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert tg.flush(timeout=20)
    assert billed(server) == sorted([("input", str(PROMPT), "gpt-4o", "run-1"), ("output", str(COMPLETION), "gpt-4o", "run-1"),
                                     ("input", str(PROMPT), "text-embedding-3-small", "run-2")])
    assert client.models is not None  # everything else is the client's own


def test_openai_stream_reads_the_final_usage_chunk_and_hides_it(server: Server, upstream: FakeUpstream, tg: Tollgate) -> None:
    client = wrap_openai(openai.OpenAI(api_key="sk-test", base_url=f"{upstream.url}/v1", max_retries=0), tg,
                         customer="acme-co")
    with client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True) as stream:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)  # no usage-only chunk to trip on
    assert text == "Hello there"
    assert upstream.requests[-1][1]["stream_options"] == {"include_usage": True}
    assert tg.flush(timeout=20)
    assert billed(server) == [("input", str(PROMPT), "gpt-4o-mini", None), ("output", str(COMPLETION), "gpt-4o-mini", None)]


def test_reserve_first_refused_never_reaches_the_provider(server: Server, upstream: FakeUpstream, tg: Tollgate,
                                                          hard_limit: Any) -> None:
    hard_limit("1000")
    client = wrap_openai(openai.OpenAI(api_key="sk-test", base_url=f"{upstream.url}/v1", max_retries=0), tg,
                         customer="acme-co", reserve=True)
    with pytest.raises(LimitExceeded) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5000)
    assert caught.value.code == "quota_exceeded" and upstream.requests == []

    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=100)  # reserved, then settled
    upstream.fail_next = 1
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=100)  # released: nothing billed
    quota = tg.balance("acme-co")["quotas"][0]
    assert Decimal(quota["used"]) == PROMPT + COMPLETION and Decimal(quota["reserved"]) == 0
    assert len(upstream.requests) == 2


def test_anthropic_messages_plain_and_streamed(server: Server, upstream: FakeUpstream, tg: Tollgate) -> None:
    client = wrap_anthropic(anthropic.Anthropic(api_key="sk-ant", base_url=upstream.url, max_retries=0), tg,
                            customer="acme-co", run_id="agent-9")
    message = client.messages.create(model="claude-x", max_tokens=100, messages=MESSAGES)
    assert message.content[0].text == "Hello there"  # type: ignore[union-attr]
    stream = client.messages.create(model="claude-y", max_tokens=100, messages=MESSAGES, stream=True)
    kinds = [event.type for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert tg.flush(timeout=20)
    both = str(PROMPT + CACHED)
    assert billed(server) == sorted([("input", both, "claude-x", "agent-9"), ("output", str(COMPLETION), "claude-x", "agent-9"),
                                     ("input", both, "claude-y", "agent-9"), ("output", str(COMPLETION), "claude-y", "agent-9")])


def test_async_clients_with_async_tollgate(server: Server, upstream: FakeUpstream, hard_limit: Any) -> None:
    hard_limit("100000")

    async def main() -> None:
        async with AsyncTollgate(base_url=server.url, api_key=server.admin_key, **FAST) as atg:
            oa = wrap_openai(openai.AsyncOpenAI(api_key="sk", base_url=f"{upstream.url}/v1", max_retries=0), atg,
                             customer="acme-co", reserve=True)
            await oa.chat.completions.create(model="gpt-a", messages=MESSAGES, max_tokens=50)
            stream = await oa.chat.completions.create(model="gpt-s", messages=MESSAGES, stream=True, max_tokens=50)
            assert [c.choices[0].delta.content async for c in stream][:2] == ["Hello", " there"]
            an = wrap_anthropic(anthropic.AsyncAnthropic(api_key="sk", base_url=upstream.url, max_retries=0), atg,
                                customer="acme-co")
            events = await an.messages.create(model="claude-s", max_tokens=10, messages=MESSAGES, stream=True)
            assert len([e async for e in events]) == 6
            assert await atg.flush(timeout=20)
            quota = (await atg.balance("acme-co"))["quotas"][0]
            assert Decimal(quota["reserved"]) == 0

    asyncio.run(main())
    both = str(PROMPT + CACHED)
    assert billed(server) == sorted([("input", both, "claude-s", None), ("input", str(PROMPT), "gpt-a", None),
                                     ("input", str(PROMPT), "gpt-s", None), ("output", str(COMPLETION), "claude-s", None),
                                     ("output", str(COMPLETION), "gpt-a", None), ("output", str(COMPLETION), "gpt-s", None)])


def test_an_unreachable_tollgate_lets_the_call_through_and_queues_its_usage(server: Server, proxy: FaultProxy,
                                                                           upstream: FakeUpstream) -> None:
    proxy.down = True
    with Tollgate(base_url=proxy.url, api_key=server.admin_key, max_attempts=2, **FAST) as tg:
        client = wrap_openai(openai.OpenAI(api_key="sk-test", base_url=f"{upstream.url}/v1", max_retries=0), tg,
                             customer="acme-co", reserve=True)
        answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)
        assert answer.choices[0].message.content == "Hello there" and len(upstream.requests) == 1
        strict = wrap_openai(openai.OpenAI(api_key="sk-test", base_url=f"{upstream.url}/v1", max_retries=0), tg,
                             customer="acme-co", reserve=True, fail_open=False)
        with pytest.raises(TollgateUnavailable):
            strict.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)
        assert len(upstream.requests) == 1  # the strict one never reached the provider
        proxy.down = False
        assert tg.flush(timeout=20)
    assert billed(server) == [("input", str(PROMPT), "gpt-4o", None), ("output", str(COMPLETION), "gpt-4o", None)]
