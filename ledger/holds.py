"""Booking in two phases on a ledger outside the database, so that a business row (PostgreSQL) and its
debit (TigerBeetle), which share no transaction, never disagree for long (docs/ledger.md):

1. ``place``: the transfers go in as pending holds, one linked chain (all or none), with a timeout. The
   ledger checks every balance bound then, atomically: what does not fit is refused before anything
   is stored.
2. The caller commits its rows together with ``record(posts)`` (the outbox row) in one transaction.
3. ``post``: the holds are posted. Ids derive from the holds, so posting twice is harmless.

A process that dies after 1 leaves holds that expire on their own (nothing was stored: nothing is
debited). One that dies after 2 leaves an outbox row: ``sweep`` posts it. A hold whose timeout passed
before it was posted is booked again as a plain transfer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

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


def place(ledger: LedgerBackend, holds: Sequence[Transfer]) -> bool:
    """Create the holds (one chain): True when they are all there (created now or by the same attempt
    before), False when the ledger refused them (a bound: nothing was created)."""
    if not holds:
        return True
    statuses = ledger.create_transfers(holds)
    return all(s.ok for s in statuses)


def void(ledger: LedgerBackend, holds: Sequence[Transfer]) -> None:
    """Release the holds now (the rows they were for were not stored)."""
    voids = [Transfer(id=derive("hold-void", h.id), pending_id=h.id, ledger=h.ledger, code=h.code, flags=_VOID)
             for h in holds]
    for hold, status in zip(holds, ledger.create_transfers(voids), strict=True):
        if not (status.ok or status in _CLOSED or status is Status.PENDING_TRANSFER_EXPIRED):
            raise RuntimeError(f"ledger refused to void hold {hold.id:x}: {status.value}")


def record(posts: Sequence[Transfer]) -> None:
    """The outbox row: call it in the transaction that stores the rows the holds are for."""
    HeldPost.objects.create(transfers=[[str(p.id), str(p.pending_id), p.ledger, p.code] for p in posts])


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


def sweep(older_than_seconds: float = 30) -> int:
    """Post what writers recorded but did not post (they died, or the ledger was away), and forget the
    outbox rows older than ``older_than_seconds``; returns how many rows it handled."""
    from ledger.backends import get_ledger

    ledger = get_ledger()
    due = timezone.now() - timedelta(seconds=older_than_seconds)
    handled = 0
    for row in HeldPost.objects.filter(created_at__lt=due).order_by("pk")[:1000]:
        posts = [Transfer(id=int(i), pending_id=int(pending), amount=AMOUNT_MAX, ledger=ledger, code=code, flags=_POST)
                 for i, pending, ledger, code in row.transfers]
        post(ledger, posts)
        row.delete()
        handled += 1
    return handled
