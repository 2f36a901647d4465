"""Booking in two phases on a ledger outside the database, so that a business row (PostgreSQL) and its
debit (TigerBeetle), which share no transaction, never disagree for long (docs/ledger.md):

1. ``place``: the transfers go in as pending holds, one linked chain (all or none), with a timeout. The
   ledger checks every balance bound then, atomically: what does not fit is refused before anything
   is stored.
2. The caller commits its rows together with the outbox row (``record(posts)`` in its transaction, or
   ``outbox(posts)`` in its statement on PostgreSQL).
3. ``post``: the holds are posted. Ids derive from the holds, so posting twice is harmless. A ledger
   that ``posts_later`` (TigerBeetle) hands them to this process's ``Poster`` (``post_soon``), which
   posts what several requests handed it in one call; its reads wait for it first (``drain``).

A process that dies after 1 leaves holds that expire on their own (nothing was stored: nothing is
debited). One that dies after 2 leaves an outbox row: ``sweep`` posts it. A hold whose timeout passed
before it was posted is booked again as a plain transfer."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from ledger.ids import derive
from ledger.models import HeldPost
from ledger.types import AMOUNT_MAX, Status, Transfer, TransferFlags

if TYPE_CHECKING:
    from ledger.backends.base import LedgerBackend

log = logging.getLogger(__name__)

HOLD_TIMEOUT_SECONDS = 300  # longer than any insert takes; a dead writer's holds free their room after it
_LINKED, _PENDING = TransferFlags.LINKED, TransferFlags.PENDING
_POST, _VOID = TransferFlags.POST_PENDING_TRANSFER, TransferFlags.VOID_PENDING_TRANSFER
_CLOSED = {Status.PENDING_TRANSFER_ALREADY_POSTED, Status.PENDING_TRANSFER_ALREADY_VOIDED}


def _linked(flags: TransferFlags, i: int, n: int) -> TransferFlags:
    return flags | _LINKED if i < n - 1 else flags


def holds_of(transfers: Sequence[Transfer], attempt: object) -> list[Transfer]:
    """The pending holds of ``transfers`` for one attempt (its key makes the ids: the same attempt
    retried finds its holds again)."""
    n = len(transfers)
    return [Transfer(id=derive("hold", attempt, t.id), debit_account_id=t.debit_account_id,
                     credit_account_id=t.credit_account_id, amount=t.amount, ledger=t.ledger, code=t.code,
                     flags=_linked(_PENDING, i, n), timeout=HOLD_TIMEOUT_SECONDS, user_data_128=t.user_data_128,
                     user_data_64=t.user_data_64, user_data_32=t.user_data_32)
            for i, t in enumerate(transfers)]


def posts_of(holds: Sequence[Transfer]) -> list[Transfer]:
    """The posts of the holds: each on its own (not linked), each idempotent by its id."""
    return [Transfer(id=derive("hold-post", h.id), pending_id=h.id, amount=AMOUNT_MAX, ledger=h.ledger, code=h.code,
                     flags=_POST) for h in holds]


def place(ledger: LedgerBackend, holds: Sequence[Transfer], before: Sequence[Transfer] = ()) -> bool:
    """Create the holds (one chain): True when they are all there (created now or by the same attempt
    before), False when the ledger refused them (a bound: nothing was created). ``before``: posted
    transfers the holds rely on (new accounts' allocations), created first in the same request, each on its
    own; one that exists is as good (an allocation whose amount differs is the terms' to follow)."""
    if not holds and not before:
        return True
    statuses = ledger.create_transfers([*before, *holds])
    first = statuses[:len(before)]
    bad = [(t.id, s) for t, s in zip(before, first, strict=True)
           if not (s.ok or s is Status.EXISTS_WITH_DIFFERENT_AMOUNT)]
    if bad:
        if holds and all(s.ok for s in statuses[len(before):]):
            void(ledger, holds)
        raise RuntimeError(f"ledger refused allocations: {bad}")
    return all(s.ok for s in statuses[len(before):])


def void(ledger: LedgerBackend, holds: Sequence[Transfer]) -> None:
    """Release the holds now (the rows they were for were not stored)."""
    voids = [Transfer(id=derive("hold-void", h.id), pending_id=h.id, ledger=h.ledger, code=h.code, flags=_VOID)
             for h in holds]
    for hold, status in zip(holds, ledger.create_transfers(voids), strict=True):
        if not (status.ok or status in _CLOSED or status is Status.PENDING_TRANSFER_EXPIRED):
            raise RuntimeError(f"ledger refused to void hold {hold.id:x}: {status.value}")


def _outbox_json(posts: Sequence[Transfer]) -> list[list[Any]]:
    return [[str(p.id), str(p.pending_id), p.ledger, p.code] for p in posts]


def record(posts: Sequence[Transfer]) -> None:
    """The outbox row: call it in the transaction that stores the rows the holds are for."""
    HeldPost.objects.create(transfers=_outbox_json(posts))


@dataclass
class Outbox:
    """The outbox row as a part of the caller's one statement (a ``Booking``: PostgreSQL), for a write that
    can take one (billing.usage.ingest.store): the row is inserted with the caller's rows, or neither."""

    posts: Sequence[Transfer]
    params: list[str] = field(init=False)
    ok: str = "TRUE"
    ok_params: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.params = [json.dumps(_outbox_json(self.posts))]

    @property
    def ctes(self) -> str:
        return (f"held_post AS (INSERT INTO {HeldPost._meta.db_table} (transfers, created_at) "  # noqa: S608
                "VALUES (%s::jsonb, statement_timestamp()))")


def outbox(posts: Sequence[Transfer]) -> Outbox:
    """``record`` as a part of the caller's statement (PostgreSQL)."""
    return Outbox(posts)


def post(ledger: LedgerBackend, posts: Sequence[Transfer]) -> None:
    """Post the holds. Expired ones are booked again as plain transfers (``_rebook``)."""
    if not posts:
        return
    statuses = ledger.create_transfers(posts)
    expired = [p for p, s in zip(posts, statuses, strict=True) if s is Status.PENDING_TRANSFER_EXPIRED]
    bad = [(p.id, s) for p, s in zip(posts, statuses, strict=True)
           if not (s.ok or s in _CLOSED or s is Status.PENDING_TRANSFER_EXPIRED)]
    if bad:
        raise RuntimeError(f"ledger refused posts: {bad}")
    if expired:
        _rebook(ledger, expired)


class Poster:
    """Posts recorded holds off the request path: one daemon thread per process, started at the first
    ``submit``; what several requests submitted goes in one ``create_transfers``. A post the ledger does
    not answer stays for the sweep (its outbox row); so does anything of a process that dies first."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._queue: list[tuple[LedgerBackend, list[Transfer]]] = []
        self._busy = False  # a call in flight
        self._thread: threading.Thread | None = None

    def submit(self, ledger: LedgerBackend, posts: Sequence[Transfer]) -> None:
        with self._cv:
            self._queue.append((ledger, list(posts)))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tollgate-held-posts", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is posted (or left to the sweep); False on timeout. A
        no-op in the poster's own thread."""
        if threading.current_thread() is self._thread:
            return True
        with self._cv:
            return self._cv.wait_for(lambda: not self._queue and not self._busy, timeout)

    @property
    def idle(self) -> bool:
        return not self._queue and not self._busy

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self._queue))
                self._busy = True  # before the queue empties: a lockless ``idle`` never sees neither
                taken, self._queue = self._queue, []
            try:
                by_ledger: dict[int, tuple[LedgerBackend, list[Transfer]]] = {}
                for ledger, posts in taken:
                    by_ledger.setdefault(id(ledger), (ledger, []))[1].extend(posts)
                for ledger, posts in by_ledger.values():
                    try:
                        post(ledger, posts)
                    except Exception:  # the outbox rows stay: the sweep posts them
                        log.warning("posting %d held transfers failed; the sweep will", len(posts), exc_info=True)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()


_poster = Poster()


def _new_poster_after_fork() -> None:
    global _poster
    _poster = Poster()  # the parent's thread is not in the child; what it had queued is the parent's


os.register_at_fork(after_in_child=_new_poster_after_fork)


def post_soon(ledger: LedgerBackend, posts: Sequence[Transfer]) -> None:
    """Post now, or, on a ledger that ``posts_later``, hand the posts to this process's poster."""
    if not posts:
        return
    if getattr(ledger, "posts_later", False):
        _poster.submit(ledger, posts)
    else:
        post(ledger, posts)


def drain(timeout: float | None = None) -> bool:
    """Wait until this process's poster has posted what it was handed (reads call it first, so that they
    never show less than what this process accepted); False on timeout."""
    poster = _poster
    return True if poster.idle and threading.current_thread() is not poster._thread else poster.drain(timeout)


def _rebook(ledger: LedgerBackend, posts: Sequence[Transfer]) -> None:
    """Holds that expired before they were posted: their rows are stored, so the usage is booked as plain
    transfers (ids from the holds: once). A bound may refuse one now (the room went to others
    meanwhile): that is logged, it is never guessed at."""
    holds = ledger.lookup_transfers([p.pending_id for p in posts])
    plain = [Transfer(id=derive("hold-rebook", h.id), debit_account_id=h.debit_account_id,
                      credit_account_id=h.credit_account_id, amount=h.amount, ledger=h.ledger, code=h.code,
                      user_data_128=h.user_data_128, user_data_64=h.user_data_64, user_data_32=h.user_data_32)
             for h in (holds.get(p.pending_id) for p in posts) if h is not None]
    for transfer, status in zip(plain, ledger.create_transfers(plain), strict=True):
        if not status.ok:
            log.error("expired hold %x could not be booked again: %s", transfer.id, status.value)


def sweep(ledger: LedgerBackend, older_than_seconds: float = 30, *, chunk: int = 1000,
          budget_seconds: float = 20) -> int:
    """Post what writers recorded but did not post (they died, or the ledger was away), and forget the
    outbox rows older than ``older_than_seconds``; returns how many rows it handled. Every limited batch
    leaves a row, so rows go ``chunk`` at a time: one ledger call for all their posts, one DELETE; until
    none is due or ``budget_seconds`` have passed (the next run goes on)."""
    due = timezone.now() - timedelta(seconds=older_than_seconds)
    deadline = time.monotonic() + budget_seconds
    handled = 0
    while time.monotonic() < deadline:
        rows = list(HeldPost.objects.filter(created_at__lt=due).order_by("pk").values_list("pk", "transfers")[:chunk])
        if not rows:
            break
        post(ledger, [Transfer(id=int(i), pending_id=int(pending), amount=AMOUNT_MAX, ledger=ledger_id, code=code,
                               flags=_POST)
                      for _pk, transfers in rows for i, pending, ledger_id, code in transfers])
        HeldPost.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
        handled += len(rows)
    return handled
