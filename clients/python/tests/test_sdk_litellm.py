"""The LiteLLM callback against the real API. LiteLLM is not installed here: the tests call the hooks the way
LiteLLM's logging does (its documented CustomLogger interface: ``log_success_event(kwargs, response_obj,
start_time, end_time)`` with LiteLLM's call details as ``kwargs``, and the proxy's ``async_pre_call_hook(
user_api_key_dict, cache, data, call_type)``), with openai's own response objects as the responses."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion
from sdk_fakes import Server
from tollgate_client import AsyncTollgate, LimitExceeded, Tollgate
from tollgate_client.integrations import billing_context
from tollgate_client.integrations.litellm import RESERVATION_KEY, TollgateCallback

FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_max": 0.2, "flush_interval": 0.05}
NOW = datetime.now(timezone.utc)


def response(model: str, prompt: int, completion: int) -> ChatCompletion:
    return ChatCompletion(id="chatcmpl-1", object="chat.completion", created=1, model=model, choices=[],
                          usage=CompletionUsage(prompt_tokens=prompt, completion_tokens=completion,
                                                total_tokens=prompt + completion))


def details(call_id: str, metadata: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    """LiteLLM's call details (the ``kwargs`` its logging hands a callback), as far as the callback reads them."""
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "litellm_call_id": call_id,
            "litellm_params": {"metadata": metadata or {}}, "stream": False, **more}


def billed(server: Server, customer: str = "acme-co") -> list[tuple[str, str, str, str | None]]:
    rows = server.get("/api/v1/events", customer=customer, limit=1000)["data"]
    return sorted((e["dimensions"]["direction"], e["quantity"], e["dimensions"]["model"], (e["trace"] or {}).get("run_id"))
                  for e in rows if e["billable"])


def test_each_completed_call_bills_its_usage_once_streams_at_their_end(server: Server) -> None:
    with Tollgate(base_url=server.url, api_key=server.admin_key, **FAST) as tg:
        callback = TollgateCallback(tg, customer="acme-co")
        callback.log_success_event(details("c1", {"tollgate_run_id": "r1"}), response("gpt-4o", 11, 5), NOW, NOW)
        callback.log_success_event(details("c1", {"tollgate_run_id": "r1"}), response("gpt-4o", 11, 5), NOW, NOW)
        # a stream: LiteLLM reports chunks, then the end with the assembled response
        callback.log_success_event(details("c2", stream=True), {"choices": []}, NOW, NOW)
        callback.log_success_event(details("c2", stream=True, complete_streaming_response=response("gpt-4o-mini", 7, 3)),
                                   {"choices": []}, NOW, NOW)
        with billing_context(run_id="r3"):  # a dict response, and the usage from the standard payload
            callback.log_success_event(details("c3", standard_logging_object={"prompt_tokens": 4,
                                                                               "completion_tokens": 2}),
                                       {"model": "claude-x"}, NOW, NOW)
        callback.log_failure_event(details("c4"), None, NOW, NOW)  # a failed call bills nothing
        assert tg.flush(timeout=20)
    assert billed(server) == sorted([("input", "11", "gpt-4o", "r1"), ("output", "5", "gpt-4o", "r1"),
                                     ("input", "7", "gpt-4o-mini", None), ("output", "3", "gpt-4o-mini", None),
                                     ("input", "4", "claude-x", "r3"), ("output", "2", "claude-x", "r3")])


def test_the_customer_comes_from_the_calls_metadata_or_a_callable(server: Server) -> None:
    from billing.customers.services import customer_create

    customer_create(external_id="globex", name="Globex")
    with Tollgate(base_url=server.url, api_key=server.admin_key, **FAST) as tg:
        by_user = TollgateCallback(tg, customer=lambda request: request.get("user"))
        by_user.log_success_event(details("u1", user="globex"), response("gpt-4o", 2, 1), NOW, NOW)
        TollgateCallback(tg).log_success_event(details("u2", {"tollgate_customer": "acme-co"}),
                                               response("gpt-4o", 3, 1), NOW, NOW)
        TollgateCallback(tg).log_success_event(details("u3"), response("gpt-4o", 9, 9), NOW, NOW)  # no one: nothing
        assert tg.flush(timeout=20)
    assert billed(server, "globex") == [("input", "2", "gpt-4o", None), ("output", "1", "gpt-4o", None)]
    assert billed(server) == [("input", "3", "gpt-4o", None), ("output", "1", "gpt-4o", None)]


def test_the_proxy_hook_reserves_first_refuses_over_the_limit_and_settles_or_releases(server: Server,
                                                                                        hard_limit: Any) -> None:
    hard_limit("1000")

    async def main() -> tuple[Any, Any]:
        async with AsyncTollgate(base_url=server.url, api_key=server.admin_key, **FAST) as atg:
            callback = TollgateCallback(atg, customer="acme-co", reserve=True)
            with pytest.raises(LimitExceeded) as refused:  # the proxy answers the error; the provider is not called
                await callback.async_pre_call_hook(None, None, {"model": "gpt-4o", "messages": [], "max_tokens": 5000},
                                                   "completion")
            data = await callback.async_pre_call_hook(None, None, {"model": "gpt-4o", "messages": [], "max_tokens": 100},
                                                      "acompletion")
            held = (await atg.balance("acme-co"))["quotas"][0]
            await callback.async_log_success_event(details("p1", data["metadata"]), response("gpt-4o", 30, 20), NOW, NOW)
            failing = await callback.async_pre_call_hook(None, None, {"model": "gpt-4o", "messages": [], "max_tokens": 100},
                                                         "acompletion")
            await callback.async_log_failure_event(details("p2", failing["metadata"]), None, NOW, NOW)
            assert await atg.flush(timeout=20)
            return refused.value, (held, (await atg.balance("acme-co"))["quotas"][0], data, failing)

    refused, (held, after, data, failing) = asyncio.run(main())
    assert refused.code == "quota_exceeded"
    assert Decimal(held["reserved"]) > 100 and isinstance(data["metadata"][RESERVATION_KEY], str)
    assert data["metadata"][RESERVATION_KEY] != failing["metadata"][RESERVATION_KEY]
    assert Decimal(after["used"]) == 50 and Decimal(after["reserved"]) == 0  # settled to the usage; released
    assert billed(server) == [("input", "30", "gpt-4o", None), ("output", "20", "gpt-4o", None)]
