"""A fake LLM provider as a real local HTTP server: OpenAI's chat completions and embeddings, Anthropic's
messages, each plain or streamed (SSE), with fixed token counts the tests check the bill against."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROMPT, COMPLETION = 11, 7
CACHED = 5  # Anthropic: cache_read_input_tokens, billed as input too


def chat_body(model: str) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION, "total_tokens": PROMPT + COMPLETION}}


def chat_chunks(model: str, include_usage: bool) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": word}, "finish_reason": None}]}
              for word in ("Hello", " there")]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION,
                                                        "total_tokens": PROMPT + COMPLETION}})
    return chunks


def message_body(model: str) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Hello there"}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": PROMPT, "output_tokens": COMPLETION, "cache_read_input_tokens": CACHED,
                      "cache_creation_input_tokens": 0}}


def message_events(model: str) -> list[tuple[str | None, dict[str, Any]]]:
    start = {**message_body(model), "content": [], "stop_reason": None,
             "usage": {"input_tokens": PROMPT, "output_tokens": 1, "cache_read_input_tokens": CACHED,
                       "cache_creation_input_tokens": 0}}
    return [("message_start", {"type": "message_start", "message": start}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "Hello"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": COMPLETION}}),
            ("message_stop", {"type": "message_stop"})]


class FakeUpstream:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.fail_next = 0  # answer this many requests with a 500
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                upstream.requests.append((self.path, body))
                upstream.answer(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        model = str(body.get("model", "unknown"))
        if self.fail_next:
            self.fail_next -= 1
            return send_json(handler, 500, {"error": {"message": "upstream broke", "type": "server_error"}})
        if handler.path.endswith("/chat/completions"):
            if not body.get("stream"):
                return send_json(handler, 200, chat_body(model))
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            return send_sse(handler, [(None, c) for c in chat_chunks(model, include)], done=True)
        if handler.path.endswith("/embeddings"):
            return send_json(handler, 200, {"object": "list", "model": model, "data": [
                {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "usage": {"prompt_tokens": PROMPT, "total_tokens": PROMPT}})
        if handler.path.endswith("/messages"):
            if not body.get("stream"):
                return send_json(handler, 200, message_body(model))
            return send_sse(handler, message_events(model), done=False)
        return send_json(handler, 404, {"error": {"message": "no route"}})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_json(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def send_sse(handler: BaseHTTPRequestHandler, events: list[tuple[str | None, dict[str, Any]]], *, done: bool) -> None:
    parts = [(f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n" for name, data in events]
    if done:
        parts.append("data: [DONE]\n\n")
    data = "".join(parts).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
