"""The TigerBeetle backend: the only module that imports ``tigerbeetle``."""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import tigerbeetle as tb
from tigerbeetle import bindings
from tigerbeetle.client import CompletionContextSync, InitError

from ledger.backends.base import LedgerBackend, LedgerUnavailable
from ledger.types import Account, AccountFlags, Status, Transfer, TransferFlags

T = TypeVar("T")

# What a client raises when it cannot get an answer: the cluster is away, or it has dropped this client
# (evicted: a replica admits a fixed number of clients), or the client was closed under the call. Each
# means "outcome unknown, retry with the same ids" and the client is replaced.
CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError, tb.ClientEvictedError, tb.ClientClosedError, tb.ClientReleaseTooLowError,
    tb.ClientReleaseTooHighError, InitError, OSError)


class TimedClient(tb.ClientSync):
    """``tb.ClientSync`` whose calls wait at most ``timeout`` seconds. The client retries for ever on its
    own; a call that times out leaves its request in flight until the client is closed (``shutdown``),
    which completes it. Safe to share between threads: every call has its own packet and event."""

    def __init__(self, cluster_id: int, replica_addresses: str, timeout: float) -> None:
        super().__init__(cluster_id, replica_addresses)
        self.timeout = timeout
        self.closed = False
        self._closing = threading.Lock()

    def _submit(self, operation: Any, operations: list[Any], c_event_type: Any, c_result_type: Any) -> Any:
        packet = self._acquire_packet(operation, operations, c_event_type, c_result_type)
        key = packet.packet.user_data
        self._inflight_packets[key] = packet
        packet.on_completion = self._on_completion
        packet.on_completion_context = done = CompletionContextSync(event=threading.Event())
        state = bindings.tb_client_submit(ctypes.byref(self._client), ctypes.byref(packet.packet))
        if state == bindings.ClientStatus.OK and not done.event.wait(self.timeout):
            # still in flight: the packet stays registered for the completion that shutdown() delivers
            raise TimeoutError(f"TigerBeetle did not answer within {self.timeout}s")
        self._inflight_packets.pop(key, None)
        if state == bindings.ClientStatus.INVALID:
            raise tb.ClientClosedError()
        if isinstance(packet.response, Exception):
            raise packet.response
        return packet.response

    def shutdown(self) -> None:
        """Close, completing whatever is in flight (their callers get ClientClosedError); idempotent."""
        with self._closing:
            if self.closed:
                return
            self.closed = True
            bindings.tb_client_deinit(ctypes.byref(self._client))
            self._inflight_packets.clear()
            tb.ClientSync._clients.pop(self._client_key, None)

    def close(self) -> None:
        self.shutdown()


def ping_once(addresses: str, cluster_id: int, timeout: float) -> None:
    """Look up a non-existent account with a client of its own: proves the cluster answers."""
    client = TimedClient(cluster_id, addresses, timeout)
    try:
        client.lookup_accounts([1])
    finally:
        client.shutdown()


# --- the backend ------------------------------------------------------------------------------------

BATCH_MAX = 8189  # transfers per request (TigerBeetle's limit with the default message size)


def _status(name: str, *, account: bool = False) -> Status:
    lowered = name.lower()
    if account and lowered.startswith("exists_with_different"):
        return Status.EXISTS_WITH_DIFFERENT_ACCOUNT
    if lowered.startswith("overflows_"):
        return Status.OVERFLOW
    try:
        return Status(lowered)
    except ValueError:
        raise RuntimeError(f"TigerBeetle answered {name}, which Tollgate never expects") from None


def chain_batches(flags: Sequence[int], limit: int = BATCH_MAX) -> list[tuple[int, int]]:
    """[start, end) slices of at most ``limit`` events that never cut a linked chain (events whose
    LINKED flag is set belong with the next one). A chain longer than ``limit`` cannot be sent at all."""
    out: list[tuple[int, int]] = []
    start = 0
    chain_start = 0  # where the chain the current event belongs to began
    linked = int(TransferFlags.LINKED)
    for i, flag in enumerate(flags):
        if i - start == limit:  # full: cut before the open chain
            if chain_start == start:
                raise ValueError(f"a linked chain of more than {limit} events cannot be sent in one request")
            out.append((start, chain_start))
            start = chain_start
        if not flag & linked:
            chain_start = i + 1
    if start < len(flags):
        out.append((start, len(flags)))
    return out


class TigerBeetleLedger(LedgerBackend):
    """The real ledger: one client (shared by the process's threads, see ledger.backends.get_ledger), every
    call under our own timeout; a client that fails is closed and replaced at the next call."""

    name = "tigerbeetle"
    # held batches are posted by this process's poster, off the request path (ledger.holds.post_soon); the
    # reads below wait for it first, so that they never show less than what this process accepted
    posts_later = True

    def __init__(self, *, addresses: str, cluster_id: int, timeout: float) -> None:
        self.addresses, self.cluster_id, self.timeout = addresses, cluster_id, timeout
        self._client: TimedClient | None = None
        self._lock = threading.Lock()

    def _connected(self) -> TimedClient:
        client = self._client
        if client is None:
            with self._lock:
                client = self._client
                if client is None:
                    try:
                        client = self._client = TimedClient(self.cluster_id, self.addresses, self.timeout)
                    except CLIENT_ERRORS as exc:
                        raise LedgerUnavailable(f"TigerBeetle client: {type(exc).__name__}: {exc}") from exc
        return client

    def _discard(self, client: TimedClient) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        client.shutdown()

    def close(self) -> None:
        """Close the client (at exit, and in tests); a later call opens a new one."""
        client = self._client
        if client is not None:
            self._discard(client)

    def _call(self, fn: Callable[[Any], T]) -> T:
        client = self._connected()
        try:
            return fn(client)
        except CLIENT_ERRORS as exc:
            self._discard(client)  # whatever it was doing is over; the next call starts a new client
            raise LedgerUnavailable(f"TigerBeetle: {type(exc).__name__}: {exc}") from exc

    def create_accounts(self, accounts: Sequence[Account]) -> list[Status]:
        batch = [tb.Account(id=a.id, ledger=a.ledger, code=a.code, flags=tb.AccountFlags(int(a.flags)),
                            user_data_128=a.user_data_128, user_data_64=a.user_data_64, user_data_32=a.user_data_32)
                 for a in accounts]
        results = self._call(lambda c: c.create_accounts(batch)) if batch else []
        return [_status(r.status.name, account=True) for r in results]

    def create_transfers(self, transfers: Sequence[Transfer], *, fresh: bool = False) -> list[Status]:
        out: list[Status] = []
        for start, end in chain_batches([int(t.flags) for t in transfers]):
            batch = [tb.Transfer(id=t.id, debit_account_id=t.debit_account_id, credit_account_id=t.credit_account_id,
                                 amount=t.amount, pending_id=t.pending_id, user_data_128=t.user_data_128,
                                 user_data_64=t.user_data_64, user_data_32=t.user_data_32, timeout=t.timeout,
                                 ledger=t.ledger, code=t.code, flags=tb.TransferFlags(int(t.flags)))
                     for t in transfers[start:end]]
            results = self._call(lambda c, b=batch: c.create_transfers(b))  # type: ignore[misc]
            out += [_status(r.status.name) for r in results]
        return out

    def lookup_accounts(self, ids: Sequence[int]) -> dict[int, Account]:
        if not ids:
            return {}
        _drain(self.timeout)
        return self._accounts(ids)

    def peek_accounts(self, ids: Sequence[int]) -> dict[int, Account]:
        """Without waiting for this process's poster: what it has not posted yet is read as pending (the
        holds of the batches this process accepted), which the limits count (``BatchDebit``)."""
        return self._accounts(ids) if ids else {}

    def _accounts(self, ids: Sequence[int]) -> dict[int, Account]:
        found = self._call(lambda c: c.lookup_accounts(list(ids)))
        return {a.id: Account(id=a.id, ledger=a.ledger, code=a.code, flags=AccountFlags(int(a.flags) & 0b1111),
                              user_data_128=a.user_data_128, user_data_64=a.user_data_64, user_data_32=a.user_data_32,
                              debits_pending=a.debits_pending, debits_posted=a.debits_posted,
                              credits_pending=a.credits_pending, credits_posted=a.credits_posted, timestamp=a.timestamp)
                for a in found}

    def lookup_transfers(self, ids: Sequence[int]) -> dict[int, Transfer]:
        if not ids:
            return {}
        _drain(self.timeout)
        return {t.id: _transfer(t) for t in self._call(lambda c: c.lookup_transfers(list(ids)))}

    def account_transfers(self, account_id: int, limit: int = 100, *, code: int = 0,
                          user_data_32: int = 0) -> list[Transfer]:
        _drain(self.timeout)
        out: list[Transfer] = []
        timestamp_min = 0
        while len(out) < limit:  # one query returns at most PAGE: page on by timestamp
            page = min(PAGE, limit - len(out))
            flt = tb.AccountFilter(account_id=account_id, user_data_128=0, user_data_64=0, user_data_32=user_data_32,
                                   code=code, timestamp_min=timestamp_min, timestamp_max=0, limit=page,
                                   flags=tb.AccountFilterFlags.DEBITS | tb.AccountFilterFlags.CREDITS)
            query = functools.partial(_account_transfers, flt=flt)
            found = [_transfer(t) for t in self._call(query)]
            out.extend(found)
            if len(found) < page:
                break
            timestamp_min = found[-1].timestamp + 1
        return out

    def ping(self) -> None:
        self._call(lambda c: c.lookup_accounts([1]))


def _drain(timeout: float) -> None:
    from ledger import holds  # (the module needs Django's apps; this one is imported without them too)

    holds.drain(timeout)


def _account_transfers(client: Any, flt: Any) -> Any:
    return client.get_account_transfers(flt)


PAGE = 8189  # the most one get_account_transfers returns (message size)


def _transfer(t: Any) -> Transfer:
    return Transfer(id=t.id, debit_account_id=t.debit_account_id, credit_account_id=t.credit_account_id, amount=t.amount,
                    ledger=t.ledger, code=t.code, flags=TransferFlags(int(t.flags) & 0b1111), pending_id=t.pending_id,
                    timeout=t.timeout, user_data_128=t.user_data_128, user_data_64=t.user_data_64,
                    user_data_32=t.user_data_32, timestamp=t.timestamp)
