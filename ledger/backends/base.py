"""The one small ledger interface both backends implement with TigerBeetle's semantics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from ledger.types import Account, Status, Transfer


class LedgerUnavailable(Exception):
    """The ledger did not answer in time (or at all). Callers must treat the outcome as unknown and
    retry with the same ids: every id is idempotent."""


class LedgerBackend(ABC):
    name: str = ""
    # True when the ledger lives in the Django database, so that a caller can debit it in the same
    # transaction as its own writes (lock_accounts, then create_transfers, then commit both or neither).
    shares_database: bool = False

    @abstractmethod
    def create_accounts(self, accounts: Sequence[Account]) -> list[Status]:
        """One status per account, in order (balances in the input are ignored)."""

    @abstractmethod
    def create_transfers(self, transfers: Sequence[Transfer]) -> list[Status]:
        """One status per transfer, in order; linked chains succeed or fail together."""

    @abstractmethod
    def lookup_accounts(self, ids: Sequence[int]) -> dict[int, Account]:
        """Found accounts by id (unknown ids are absent)."""

    @abstractmethod
    def lookup_transfers(self, ids: Sequence[int]) -> dict[int, Transfer]:
        """Found transfers by id (unknown ids are absent)."""

    @abstractmethod
    def account_transfers(self, account_id: int, limit: int = 100, *, code: int = 0,
                          user_data_32: int = 0) -> list[Transfer]:
        """The account's transfers, oldest first (its history); ``code``/``user_data_32`` filter when non-zero
        (TigerBeetle's AccountFilter semantics)."""

    def lock_accounts(self, ids: Sequence[int]) -> dict[int, Account]:
        """Found accounts by id, locked until the caller's database transaction ends (expired pending
        transfers released first). Only for a backend that ``shares_database``; call it inside
        ``transaction.atomic()``."""
        raise NotImplementedError(f"the {self.name} ledger does not share the database")

    def expire_pending(self) -> int:
        """Release pending transfers whose timeout has passed; returns how many. TigerBeetle does this
        on its own; the SQL backend runs it from a Celery beat sweep (and before each write)."""
        return 0

    @abstractmethod
    def ping(self) -> None:
        """Raise if the ledger cannot answer."""
