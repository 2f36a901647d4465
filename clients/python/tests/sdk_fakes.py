"""What the SDK's tests run against: a fault-injecting HTTP proxy in front of the real API, and reads of what
the server stored (the ground truth for exactly-once)."""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


class FaultProxy:
    """Forwards HTTP requests to ``target``. ``faults`` is consumed one per request: ``"503"``, ``"429"``
    (Retry-After: ``retry_after``), ``"reset"`` (the connection is cut before anything is forwarded),
    ``"lose_reply"`` (forwarded, then cut before the answer: the server has it, the client does not know),
    ``"down"`` (like reset, for every request while ``down`` is set), or None (forward)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.faults: list[str | None] = []
        self.down = False
        self.retry_after = "1"
        self.random_faults: tuple[float, random.Random] | None = None  # (rate, rng): a random fault per request
        self.requests: list[tuple[str, list[str], str]] = []  # (path, event_ids, what the proxy did)
        self.lock = threading.Lock()
        self.http = httpx.Client(base_url=target, timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.handle(self, b"")

            def do_POST(self) -> None:
                proxy.handle(self, self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        with self.lock:
            fault = "reset" if self.down else (self.faults.pop(0) if self.faults else None)
            if fault is None and self.random_faults is not None and self.random_faults[1].random() < self.random_faults[0]:
                fault = self.random_faults[1].choice(["503", "reset", "lose_reply", "429"])
            ids = event_ids(body)
            self.requests.append((handler.path, ids, fault or "forward"))
        if fault == "reset":
            cut(handler)
            return
        if fault in ("503", "429"):
            payload = json.dumps({"error": {"code": "injected", "message": "fault"}}).encode()
            handler.send_response(int(fault))
            if fault == "429":
                handler.send_header("Retry-After", self.retry_after)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() in ("authorization", "content-type")}
        answer = self.http.request(handler.command, handler.path, content=body or None, headers=headers)
        if fault == "lose_reply":
            cut(handler)
            return
        handler.send_response(answer.status_code)
        for name, value in answer.headers.items():
            if name.lower() in ("content-type", "retry-after"):
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(answer.content)))
        handler.end_headers()
        handler.wfile.write(answer.content)

    def sent_ids(self, path: str = "/api/v1/events/batch") -> list[list[str]]:
        with self.lock:
            return [ids for p, ids, _ in self.requests if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()


def event_ids(body: bytes) -> list[str]:
    try:
        data = json.loads(body)
    except ValueError:
        return []
    events = data.get("events", [data]) if isinstance(data, dict) else []
    return [e["event_id"] for e in events if isinstance(e, dict) and "event_id" in e]


def cut(handler: BaseHTTPRequestHandler) -> None:
    """Close with a TCP reset, answering nothing."""
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.close_connection = True
    handler.connection.close()


@dataclass
class Server:
    url: str
    ingest_key: str
    admin_key: str

    def get(self, path: str, **params: Any) -> Any:
        answer = httpx.get(f"{self.url}{path}", params=params, headers={"Authorization": f"Bearer {self.admin_key}"},
                           timeout=120)  # reads over 100,000 raw events take a while on a loaded machine
        assert answer.status_code == 200, answer.text
        return answer.json()


def stored_ids() -> list[str]:
    from billing.usage.models import UsageEvent

    return list(UsageEvent.objects.values_list("event_id", flat=True))
