"""The TigerBeetle backend: the only module that imports ``tigerbeetle``."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import tigerbeetle as tb

from ledger.backends.base import LedgerBackend, LedgerUnavailable
from ledger.types import Account, AccountFlags, Status, Transfer, TransferFlags

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


def ping_once(addresses: str, cluster_id: int, timeout: float) -> None:
    """Look up a non-existent account: proves the cluster answers."""
    client = tb.ClientSync(cluster_id=cluster_id, replica_addresses=addresses)
    try:
        call_with_timeout(client, lambda: client.lookup_accounts([1]), timeout)
    except TimeoutError:
        raise
    else:
        client.close()


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


class TigerBeetleLedger(LedgerBackend):
    """The real ledger: one ClientSync per thread, every call under our own timeout."""

    name = "tigerbeetle"

    def __init__(self, *, addresses: str, cluster_id: int, timeout: float) -> None:
        self.addresses, self.cluster_id, self.timeout = addresses, cluster_id, timeout
        self._client: Any = None

    def _call(self, fn: Callable[[Any], T]) -> T:
        if self._client is None:
            self._client = tb.ClientSync(cluster_id=self.cluster_id, replica_addresses=self.addresses)
        client = self._client
        try:
            return call_with_timeout(client, lambda: fn(client), self.timeout)
        except TimeoutError as exc:
            self._client = None  # closed by call_with_timeout; the next call reconnects
            raise LedgerUnavailable(str(exc)) from exc

    def create_accounts(self, accounts: Sequence[Account]) -> list[Status]:
        batch = [tb.Account(id=a.id, ledger=a.ledger, code=a.code, flags=tb.AccountFlags(int(a.flags)),
                            user_data_128=a.user_data_128, user_data_64=a.user_data_64, user_data_32=a.user_data_32)
                 for a in accounts]
        results = self._call(lambda c: c.create_accounts(batch)) if batch else []
        return [_status(r.status.name, account=True) for r in results]

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[Status]:
        out: list[Status] = []
        for start in range(0, len(transfers), BATCH_MAX):
            batch = [tb.Transfer(id=t.id, debit_account_id=t.debit_account_id, credit_account_id=t.credit_account_id,
                                 amount=t.amount, pending_id=t.pending_id, user_data_128=t.user_data_128,
                                 user_data_64=t.user_data_64, user_data_32=t.user_data_32, timeout=t.timeout,
                                 ledger=t.ledger, code=t.code, flags=tb.TransferFlags(int(t.flags)))
                     for t in transfers[start:start + BATCH_MAX]]
            results = self._call(lambda c, b=batch: c.create_transfers(b))  # type: ignore[misc]
            out += [_status(r.status.name) for r in results]
        return out

    def lookup_accounts(self, ids: Sequence[int]) -> dict[int, Account]:
        if not ids:
            return {}
        found = self._call(lambda c: c.lookup_accounts(list(ids)))
        return {a.id: Account(id=a.id, ledger=a.ledger, code=a.code, flags=AccountFlags(int(a.flags) & 0b1111),
                              user_data_128=a.user_data_128, user_data_64=a.user_data_64, user_data_32=a.user_data_32,
                              debits_pending=a.debits_pending, debits_posted=a.debits_posted,
                              credits_pending=a.credits_pending, credits_posted=a.credits_posted, timestamp=a.timestamp)
                for a in found}

    def lookup_transfers(self, ids: Sequence[int]) -> dict[int, Transfer]:
        if not ids:
            return {}
        return {t.id: _transfer(t) for t in self._call(lambda c: c.lookup_transfers(list(ids)))}

    def account_transfers(self, account_id: int, limit: int = 100, *, code: int = 0,
                          user_data_32: int = 0) -> list[Transfer]:
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


def _account_transfers(client: Any, flt: Any) -> Any:
    return client.get_account_transfers(flt)


PAGE = 8189  # the most one get_account_transfers returns (message size)


def _transfer(t: Any) -> Transfer:
    return Transfer(id=t.id, debit_account_id=t.debit_account_id, credit_account_id=t.credit_account_id, amount=t.amount,
                    ledger=t.ledger, code=t.code, flags=TransferFlags(int(t.flags) & 0b1111), pending_id=t.pending_id,
                    timeout=t.timeout, user_data_128=t.user_data_128, user_data_64=t.user_data_64,
                    user_data_32=t.user_data_32, timestamp=t.timestamp)
