"""The LLM gateway driven by the official ``openai`` client against the live portal, with a fake
OpenAI-compatible upstream on loopback: over a limit the answer is 402 in OpenAI's shape and the
upstream gets nothing; streamed and whole answers bill exactly the upstream's ``usage``; upstream
errors pass through and bill nothing; a client leaving mid-stream settles what was generated."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest

from billing.customers.models import ApiKey as ApiKeyModel
from billing.customers.services import api_key_create
from billing.gateway import upstream
from billing.guardrails.models import Reservation
from billing.usage.models import UsageEvent
from tests import factories

pytestmark = [pytest.mark.ledger, pytest.mark.django_db(transaction=True)]


class FakeUpstream:
    """An OpenAI-compatible server: counts requests; answers per ``mode``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.mode = "ok"
        self.slow_seconds = 2.0
        self.waiting = 0  # slow requests being answered now, and the most at once
        self.most_waiting = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if fake.mode == "error":
                    return self._send(500, {"error": {"message": "upstream broke", "type": "server_error"}})
                if fake.mode == "slow":
                    with fake._lock:
                        fake.waiting += 1
                        fake.most_waiting = max(fake.most_waiting, fake.waiting)
                    time.sleep(fake.slow_seconds)
                    with fake._lock:
                        fake.waiting -= 1
                if self.path.endswith("/embeddings"):
                    return self._send(200, {"object": "list", "model": body["model"], "data": [
                        {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                        "usage": {"prompt_tokens": 7, "total_tokens": 7}})
                if body.get("stream"):
                    return self._stream(body)
                self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": "Hello there"}}],
                                 "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}})

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                words = ["one ", "two ", "three ", "four"] * (50 if fake.mode == "long" else 1)
                try:
                    for word in words:
                        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                                 "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        if fake.mode == "long":
                            time.sleep(0.01)
                    if body.get("stream_options", {}).get("include_usage"):
                        usage = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                                 "choices": [], "usage": {"prompt_tokens": 13, "completion_tokens": 4,
                                                          "total_tokens": 17}}
                        self.wfile.write(f"data: {json.dumps(usage)}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake(settings: Any) -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    settings.GATEWAY_UPSTREAM_URL, settings.GATEWAY_UPSTREAM_KEY = server.url, "sk-upstream"
    settings.GATEWAY_TIMEOUT_SECONDS = 1.0
    upstream.reset()
    yield server
    upstream.reset()
    server.close()


@pytest.fixture
def client(acme: Any, live_server: Any) -> openai.OpenAI:
    _, raw = api_key_create(name="app", scope="gateway", customer=acme)
    return openai.OpenAI(base_url=f"{live_server.url}/gateway/v1", api_key=raw, max_retries=0)


def subscribe(customer: Any, hard: str = "1000000") -> None:
    text = factories.catalog(factories.plan("metered", [{"meter": "llm_tokens", "model": "per_unit",
                                                          "unit_price": "0.00001"}],
                                            limits=[{"meter": "llm_tokens", "hard": hard}]))
    factories.subscribe(customer, "metered", start=datetime(2026, 1, 1, tzinfo=timezone.utc),
                        now=datetime.now(timezone.utc), catalog_text=text)


def billed() -> dict[str, Decimal]:
    return {e.dimensions["direction"]: e.quantity for e in UsageEvent.objects.filter(billable=True)}


def test_a_whole_answer_bills_exactly_its_usage_with_model_direction_and_run(acme, client, fake):
    subscribe(acme)
    answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=100, extra_headers={"X-Tollgate-Run": "agent-7"})
    assert answer.choices[0].message.content == "Hello there" and answer.usage.total_tokens == 16
    assert billed() == {"input": Decimal(11), "output": Decimal(5)}
    assert {e.dimensions["model"] for e in UsageEvent.objects.all()} == {"gpt-4o"}
    assert {e.run_id for e in UsageEvent.objects.all()} == {"agent-7"}
    assert fake.requests[0]["auth"] == "Bearer sk-upstream"
    assert Reservation.objects.get().state == "settled"


def test_a_stream_is_relayed_and_bills_the_usage_chunk(acme, client, fake):
    subscribe(acme)
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "count"}],
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert fake.requests[0]["body"]["stream_options"] == {"include_usage": True}
    assert billed() == {"input": Decimal(13), "output": Decimal(4)}


def test_over_the_limit_is_402_in_openais_shape_and_the_upstream_gets_nothing(acme, client, fake):
    subscribe(acme, hard="50")
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=100)
    assert refused.value.status_code == 402
    body: Any = refused.value.body
    assert body["code"] == "quota_exceeded" and body["type"] == "insufficient_quota"
    assert fake.requests == []
    assert UsageEvent.objects.count() == 0


def test_upstream_errors_pass_through_and_bill_nothing(acme, client, fake):
    subscribe(acme)
    fake.mode = "error"
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=10)
    failed_body: Any = failed.value.body
    assert failed_body["message"] == "upstream broke"
    fake.mode = "slow"
    with pytest.raises(openai.APIStatusError) as slow:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=10)
    assert slow.value.status_code == 504
    assert UsageEvent.objects.count() == 0
    assert set(Reservation.objects.values_list("state", flat=True)) == {"released"}


def test_a_client_leaving_mid_stream_settles_what_was_generated(acme, live_server, fake):
    subscribe(acme)
    fake.mode = "long"
    _, raw = api_key_create(name="app", scope="gateway", customer=acme)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "count"}], "stream": True}
    with httpx.stream("POST", f"{live_server.url}/gateway/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {raw}"}, timeout=10) as response:
        for n, _line in enumerate(response.iter_lines()):
            if n >= 20:
                break  # leaves after 10 chunks (a chunk and a blank line each)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not UsageEvent.objects.filter(dimensions__direction="output").exists():
        time.sleep(0.1)
    usage = billed()
    assert usage["input"] > 0 and 0 < usage["output"] < 200  # some of the 200 words, not the worst case
    assert Reservation.objects.get().state == "settled"


def test_embeddings_bill_their_input_and_keys_are_checked(acme, client, fake, live_server, make_client):
    subscribe(acme)
    result = client.embeddings.create(model="text-embedding-3-small", input="hello world")
    assert result.usage.prompt_tokens == 7 and billed() == {"input": Decimal(7)}
    read_key = make_client("read", customer=acme).raw_key
    for key in ("tg_nope_nope", read_key):
        response = httpx.post(f"{live_server.url}/gateway/v1/embeddings", json={"model": "m", "input": "x"},
                              headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert len(fake.requests) == 1


def test_a_customer_issues_and_revokes_its_own_gateway_keys_from_the_dashboard(acme, globex, live_server, fake,
                                                                                 client):
    from django.test import Client

    from billing.customers.services import customer_user_create

    subscribe(acme)
    customer_user_create(customer=acme, username="ann", password="pw-123456")
    browser = Client()
    browser.login(username="ann", password="pw-123456")

    page = browser.post("/dashboard/acme-co/settings/gateway-keys", {"name": "chatbot"}).content.decode()
    raw = page.split('id="new-gateway-key"')[1].split("<code>")[1].split("</code>")[0]
    assert raw.startswith("tg_") and "chatbot" in page
    app = openai.OpenAI(base_url=f"{live_server.url}/gateway/v1", api_key=raw, max_retries=0)
    made = app.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert made.usage is not None and made.usage.total_tokens == 16
    assert raw not in browser.get("/dashboard/acme-co/settings/").content.decode()  # shown once
    assert browser.post("/dashboard/globex/settings/gateway-keys", {"name": "x"}).status_code == 404

    prefix = raw.split("_")[1]
    assert browser.post(f"/dashboard/acme-co/settings/gateway-keys/{prefix}/revoke").status_code == 302
    with pytest.raises(openai.AuthenticationError):
        app.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)


def test_staff_issue_and_revoke_a_customers_gateway_keys_from_the_console(acme, client, fake):
    from django.contrib.auth import get_user_model
    from django.test import Client

    subscribe(acme)
    staff = Client()
    staff.force_login(get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True))
    page = staff.post("/console/customers/acme-co/guardrails/gateway-keys", {"name": "acme app"}).content.decode()
    raw = page.split('id="new-gateway-key"')[1].split("<code>")[1].split("</code>")[0]
    assert ApiKeyModel.objects.get(prefix=raw.split("_")[1]).customer == acme
    prefix = raw.split("_")[1]
    assert staff.post(f"/console/customers/acme-co/guardrails/gateway-keys/{prefix}/revoke").status_code == 302
    assert ApiKeyModel.objects.get(prefix=prefix).revoked_at is not None
    customer_user = Client()
    assert customer_user.post("/console/customers/acme-co/guardrails/gateway-keys", {"name": "x"}).status_code == 302
