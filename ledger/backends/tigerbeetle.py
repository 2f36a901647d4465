"""The TigerBeetle backend: the only module that imports ``tigerbeetle``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import tigerbeetle as tb

T = TypeVar("T")


def call_with_timeout(client: Any, call: Callable[[], T], timeout: float) -> T:
    """Run one client call under our own deadline. The client retries for ever on its own; when the
    deadline passes, the client is closed, which completes the pending request with an error and
    stops its retry loop (a hung client must not keep a thread and sockets alive)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="tigerbeetle-call", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        with contextlib.suppress(Exception, AssertionError):
            client.close()
        worker.join(1.0)
        raise TimeoutError(f"TigerBeetle did not answer within {timeout}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def ping(addresses: str, cluster_id: int, timeout: float) -> None:
    """Look up a non-existent account: proves the cluster answers."""
    client = tb.ClientSync(cluster_id=cluster_id, replica_addresses=addresses)
    try:
        call_with_timeout(client, lambda: client.lookup_accounts([1]), timeout)
    except TimeoutError:
        raise
    else:
        client.close()
