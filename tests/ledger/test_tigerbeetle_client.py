"""The TigerBeetle client as the app uses it: one per process shared by its threads, never split chains,
every client failure a 503 (LedgerUnavailable) with the client replaced. Against a real replica."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import tigerbeetle as tb

from ledger import backends
from ledger.backends.base import LedgerUnavailable
from ledger.backends.tigerbeetle import TigerBeetleLedger, TimedClient, chain_batches
from ledger.types import TransferFlags

L = int(TransferFlags.LINKED)


def test_batches_are_cut_between_chains_only() -> None:
    flags = [0, L, L, 0, 0, L, 0]  # chains: [0] [1-3] [4] [5-6]
    assert chain_batches(flags, limit=3) == [(0, 1), (1, 4), (4, 7)]
    assert chain_batches(flags, limit=7) == [(0, 7)]
    assert chain_batches([0] * 5, limit=2) == [(0, 2), (2, 4), (4, 5)]
    assert chain_batches([], limit=2) == []
    with pytest.raises(ValueError, match="linked chain"):
        chain_batches([L, L, 0], limit=2)


@pytest.fixture
def tigerbeetle(settings: Any) -> Iterator[TigerBeetleLedger]:
    settings.LEDGER_BACKEND = "tigerbeetle"
    settings.TIGERBEETLE_ADDRESSES = os.environ["TIGERBEETLE_ADDRESSES"]
    settings.TIGERBEETLE_CLUSTER_ID = int(os.environ.get("TIGERBEETLE_CLUSTER_ID", "0"))
    ledger = backends.get_ledger()
    assert isinstance(ledger, TigerBeetleLedger)
    yield ledger
    backends.close_ledger()


@pytest.mark.tigerbeetle
def test_one_client_per_process_whatever_the_threads(tigerbeetle: TigerBeetleLedger) -> None:
    # a production replica admits 32 clients: 64 threads (a server's request threads) must share one
    seen: set[int] = set()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            ledger = backends.get_ledger()
            ledger.ping()
            assert isinstance(ledger, TigerBeetleLedger)
            seen.add(id(ledger._client))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(seen) == 1


@pytest.mark.tigerbeetle
@pytest.mark.parametrize("error", [tb.ClientEvictedError, tb.ClientClosedError, TimeoutError])
def test_a_failing_client_is_a_503_and_is_replaced(tigerbeetle: TigerBeetleLedger, error: type[Exception],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    tigerbeetle.ping()
    broken = tigerbeetle._client
    assert broken is not None

    def fail(self: Any, ids: Any) -> Any:
        raise error()

    monkeypatch.setattr(TimedClient, "lookup_accounts", fail)
    with pytest.raises(LedgerUnavailable):
        tigerbeetle.ping()
    assert broken.closed and tigerbeetle._client is None
    monkeypatch.undo()
    tigerbeetle.ping()  # a new client, and the ledger answers again
    assert tigerbeetle._client is not None and tigerbeetle._client is not broken


@pytest.mark.tigerbeetle
def test_an_unreachable_cluster_times_out_as_unavailable(settings: Any) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ledger = TigerBeetleLedger(addresses=f"127.0.0.1:{port}", cluster_id=0, timeout=0.5)
    try:
        for _ in range(2):  # the second call gets a new client, and the same answer
            with pytest.raises(LedgerUnavailable):
                ledger.ping()
    finally:
        ledger.close()


@pytest.mark.tigerbeetle
def test_a_forked_child_opens_its_own_client(tigerbeetle: TigerBeetleLedger) -> None:
    tigerbeetle.ping()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            child = backends.get_ledger()
            child.ping()
            code = 0 if child is not tigerbeetle else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"\x00"
    tigerbeetle.ping()  # the parent's client still works


def test_a_page_answers_503_with_retry_after_when_the_ledger_is_away(rf: Any) -> None:
    from portal.errors import DomainErrorMiddleware

    middleware = DomainErrorMiddleware(lambda request: None)  # type: ignore[arg-type,return-value]
    page = middleware.process_exception(rf.get("/dashboard/"), LedgerUnavailable("away"))
    assert page is not None and page.status_code == 503 and page["Retry-After"] == "1"
    assert middleware.process_exception(rf.get("/api/v1/usage"), LedgerUnavailable("away")) is None  # DRF's
