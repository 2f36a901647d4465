"""The one small ledger interface both backends implement with TigerBeetle's semantics."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from django.db import transaction

from ledger.types import Account, Status, Transfer


class Booking(Protocol):
    """A booking as parts of one SQL statement (``LedgerBackend.booking``): common table expressions and
    their parameters, and a condition (with its own parameters) that holds when it went as expected."""

    params: list[str]

    @property
    def ctes(self) -> str: ...

    @property
    def ok(self) -> str: ...

    @property
    def ok_params(self) -> list[Any]: ...


class RowWrite(Protocol):
    """The caller's own write that a booking goes along with (ingest's event insert): ``run`` writes in the
    caller's open transaction, with the booking's statement parts when the ledger gives them (``booking``:
    one statement for both), and raises, writing nothing, when its rows are not what the booking assumed."""

    def run(self, booking: Booking | None = None) -> Any: ...


class LedgerUnavailable(Exception):
    """The ledger did not answer in time (or at all). Callers must treat the outcome as unknown and
    retry with the same ids: every id is idempotent."""


class LedgerRefused(Exception):
    """``book_checked`` found a transfer it cannot book as given, or an expectation that does not hold:
    nothing was booked."""


class LedgerBackend(ABC):
    name: str = ""
    # True when the ledger lives in the Django database, so that a caller can debit it in the same
    # transaction as its own writes (lock_accounts, then create_transfers, then commit both or neither).
    shares_database: bool = False

    @abstractmethod
    def create_accounts(self, accounts: Sequence[Account]) -> list[Status]:
        """One status per account, in order (balances in the input are ignored)."""

    @abstractmethod
    def create_transfers(self, transfers: Sequence[Transfer], *, fresh: bool = False) -> list[Status]:
        """One status per transfer, in order; linked chains succeed or fail together. ``fresh``: the caller
        derived every id from an id it drew itself just now, so none can exist or have failed yet (a ledger
        may skip looking them up; a duplicate is still refused by the id's uniqueness)."""

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

    def peek_accounts(self, ids: Sequence[int]) -> dict[int, Account]:
        """``lookup_accounts`` for a decision that the booking checks again, and that is taken again under
        locks when it refuses (ingest's optimistic pass): a pending transfer whose timeout has passed may
        still be counted (the SQL ledger releases them before it locks or writes, not here), which can only
        make the decision refuse, never accept more. The default is ``lookup_accounts``."""
        return self.lookup_accounts(ids)

    def lock_accounts(self, ids: Sequence[int]) -> dict[int, Account]:
        """Found accounts by id, locked until the caller's database transaction ends (expired pending
        transfers released first). Only for a backend that ``shares_database``; call it inside
        ``transaction.atomic()``."""
        raise NotImplementedError(f"the {self.name} ledger does not share the database")

    def book_checked(self, transfers: Sequence[Transfer], expect: Mapping[int, tuple[int | None, int | None]] | None = None
                     ) -> None:
        """Create fresh, single-phase, posted transfers in the caller's open database transaction, for a
        caller that has checked their limits: on accounts it holds (``lock_accounts``), or on balances it
        read without a lock, stating with ``expect`` what its decision assumed of accounts other than the
        bounded ones (account id -> inclusive (low, high) bounds of the account's ``debits_posted`` before
        this booking; None: unbounded). Every check ``create_transfers`` would make still holds; if any
        fails, or an expectation does not (another transaction moved the account meanwhile), nothing is
        booked, the caller's transaction is marked for rollback and ``LedgerRefused`` is raised. Only for a
        backend that ``shares_database``."""
        raise NotImplementedError(f"the {self.name} ledger does not share the database")

    def booking(self, transfers: Sequence[Transfer], expect: Mapping[int, tuple[int | None, int | None]] | None = None
                ) -> Booking | None:
        """``book_checked``'s booking as parts of one SQL statement, for a caller that runs it together with
        its own writes (billing.usage.ingest.store: the event insert and its debit in one statement). Only for
        a backend that ``shares_database`` on PostgreSQL."""
        raise NotImplementedError(f"the {self.name} ledger does not share the database")

    def book_with(self, transfers: Sequence[Transfer], expect: Mapping[int, tuple[int | None, int | None]] | None,
                  write: RowWrite, key: object, *, new_accounts: Sequence[Account] = (),
                  allocations: Sequence[Transfer] = ()) -> Any:
        """Book fresh ``transfers`` together with the caller's database ``write``: both, or neither; returns
        what ``write.run`` returns. ``LedgerRefused`` (nothing booked or written) when a balance bound, or
        what ``expect`` states of the accounts' debits (see ``book_checked``), does not hold. ``key`` names
        the attempt (its retry finds what it left). ``new_accounts`` are accounts the caller found absent
        and ``allocations`` fresh posted transfers that credit them, booked before ``transfers`` (an agent
        run's accounts with its first events: no ledger calls of their own).

        This default, for a ledger outside the database, creates the new accounts first (one call; one that
        exists by then, created by a concurrent booking, is as good: the bounds decide), then holds the
        transfers as pending ones, after the allocations in the same request, runs the write with the holds'
        posts recorded (the outbox row: in the write's one statement on PostgreSQL, else in its
        transaction), then posts them, or has them posted (ledger.holds; ``expect`` is not checked: bounds
        are). The SQL backend does it in the write's own transaction."""
        from django.db import connection

        from ledger import holds

        if new_accounts:
            statuses = self.create_accounts(new_accounts)
            bad = [(a.id, s) for a, s in zip(new_accounts, statuses, strict=True) if not s.ok]
            if bad:
                raise RuntimeError(f"ledger refused accounts: {bad}")
        held = holds.holds_of(transfers, key)
        if not holds.place(self, held, allocations):
            raise LedgerRefused("a bound refused the batch's holds")
        posts = holds.posts_of(held)
        try:
            if posts and connection.vendor == "postgresql":
                # one statement: the rows and the outbox row; in a caller's transaction a savepoint stands
                # for the autocommit (a write that refuses itself leaves that transaction usable)
                with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
                    result = write.run(holds.outbox(posts))
            else:
                with transaction.atomic():
                    result = write.run(None)
                    if posts:
                        holds.record(posts)
        except BaseException:
            with contextlib.suppress(Exception):
                holds.void(self, held)  # nothing was written: free the room now rather than at the holds' timeout
            raise
        with contextlib.suppress(LedgerUnavailable):  # written and recorded: the sweep posts them (holds.sweep)
            holds.post_soon(self, posts)
        return result

    def expire_pending(self) -> int:
        """Release pending transfers whose timeout has passed; returns how many. TigerBeetle does this
        on its own; the SQL backend runs it from a Celery beat sweep (and before each write)."""
        return 0

    @abstractmethod
    def ping(self) -> None:
        """Raise if the ledger cannot answer."""

    def close(self) -> None:
        """Release connections (a TigerBeetle client); the backend may be used again afterwards."""
        return None
