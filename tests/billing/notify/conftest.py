"""A real HTTP receiver on loopback (http.server in a thread) that records what it is sent, answers
what the test scripts, and dedups by event id as a well-behaved operator's receiver would."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[Answer] = []  # answers to give, in order; then 200
        self.processed: Counter[str] = Counter()  # event id -> times acted on (2xx answered, first time only)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
                    answer = receiver.script.pop(0) if receiver.script else Answer()
                if answer.delay:
                    time.sleep(answer.delay)
                if 200 <= answer.status < 300:
                    event_id = json.loads(body)["id"]
                    with receiver.lock:
                        if event_id not in receiver.processed:  # a repeat of an id is acknowledged, not acted on
                            receiver.processed[event_id] += 1
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):  # the sender timed out and left
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/tollgate"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


