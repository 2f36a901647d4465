"""``book_checked``'s one statement (PostgreSQL): fresh posted transfers booked as common table
expressions a caller may append to its own statement."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ledger.backends.sql.rows import (
    _CREDITS_BOUNDED,
    _DEBITS_BOUNDED,
    _STATE_POSTED,
    _TRANSFER_COLUMNS,
)
from ledger.types import Transfer


@dataclass(slots=True)
class Booking:
    """Fresh posted transfers as one set of common table expressions (``_BOOK``): the accounts' moves are
    summed per (account, ledger), the accounts locked in ascending id order, every limit flag, ledger and
    expectation (``expect``: account -> low/high bounds of its debits_posted) checked in the UPDATE, and
    the transfers inserted. It went as expected when ``counts`` equals ``expected``: every account moved,
    every transfer inserted (none existed), none failed before."""

    transfers: list[Transfer]
    expect: dict[int, tuple[int | None, int | None]]
    params: list[str]
    expected: tuple[int, ...]  # (accounts moved, transfers inserted, failed before[, accounts created])

    @property
    def creates(self) -> bool:
        """Whether the booking also creates accounts (``_CREATE``): then ``expected`` has a fourth count."""
        return len(self.expected) == 4

    @property
    def ctes(self) -> str:
        return _BOOK + _CREATE if self.creates else _BOOK

    @property
    def counts(self) -> str:
        return _BOOK_COUNTS + _CREATE_COUNT if self.creates else _BOOK_COUNTS

    @property
    def ok(self) -> str:
        """The condition, its parameters (``ok_params``) following the ctes' (a constant text per kind of
        booking: it can be prepared once per connection)."""
        return f"({self.counts}) = ({', '.join(['%s::int8'] * len(self.expected))})"

    @property
    def ok_params(self) -> list[int]:
        return list(self.expected)

    def refusal(self, counts: Sequence[int]) -> str:
        updated, inserted, failed_before, *created = counts
        exist = f", {self.expected[3] - created[0]} of {self.expected[3]} new accounts exist" if created else ""
        return (f"{len(self.transfers)} transfers: {len(self.transfers) - inserted} ids exist, {failed_before} failed "
                f"before, {self.expected[0] - updated} of {self.expected[0]} account moves missing, on another ledger, "
                f"over a limit or not as expected{exist}")


# the bounds expected of each account's debits_posted, then the transfers. The accounts are locked in
# ascending id order first (those the caller locked are its already); an account moves only if it exists
# on that ledger, stays within its limit flags and is as expected, so the caller compares the counts.
_BOOK = f"""
m AS (
  SELECT * FROM unnest(string_to_array(%s, ',')::numeric[], string_to_array(%s, ',')::bigint[],
                       string_to_array(%s, ',')::numeric[], string_to_array(%s, ',')::numeric[],
                       string_to_array(%s, ',', '')::numeric[], string_to_array(%s, ',', '')::numeric[])
    AS m(id, ledger, d, c, low, high)
), locked AS (
  SELECT id FROM ledger_account WHERE id IN (SELECT id FROM m) ORDER BY id FOR UPDATE
), updated AS (
  UPDATE ledger_account AS a SET debits_posted = a.debits_posted + m.d, credits_posted = a.credits_posted + m.c
  FROM m JOIN locked ON locked.id = m.id
  WHERE a.id = m.id AND a.ledger = m.ledger
    AND (a.flags & {_DEBITS_BOUNDED} = 0 OR a.debits_pending + a.debits_posted + m.d <= a.credits_posted)
    AND (a.flags & {_CREDITS_BOUNDED} = 0 OR a.credits_pending + a.credits_posted + m.c <= a.debits_posted)
    AND (m.low IS NULL OR a.debits_posted >= m.low) AND (m.high IS NULL OR a.debits_posted <= m.high)
  RETURNING a.id
), v AS (
  SELECT * FROM unnest(string_to_array(%s, ',')::numeric[], string_to_array(%s, ',')::numeric[],
                       string_to_array(%s, ',')::numeric[], string_to_array(%s, ',')::numeric[],
                       string_to_array(%s, ',')::bigint[], string_to_array(%s, ',')::bigint[],
                       string_to_array(%s, ',')::numeric[], string_to_array(%s, ',')::numeric[],
                       string_to_array(%s, ',')::bigint[], string_to_array(%s, ',')::bigint[])
    AS v(id, dr, cr, amount, ledger, code, u128, u64, u32, ts)
), inserted AS (
  INSERT INTO ledger_transfer ({", ".join(_TRANSFER_COLUMNS)})
  SELECT id, dr, cr, amount, amount, 0, ledger, code, 0, 0, u128, u64, u32, ts, {_STATE_POSTED}, NULL FROM v
  ON CONFLICT (id) DO NOTHING RETURNING id
)"""  # noqa: S608 - constants only
_BOOK_COUNTS = """(SELECT count(*) FROM updated), (SELECT count(*) FROM inserted),
       (SELECT count(*) FROM ledger_failed_transfer WHERE id IN (SELECT id FROM v))"""

# Accounts the booking creates (an agent run's, a new period's), inserted with their balances after the
# booking's transfers (a statement's common table expressions all see one snapshot: an account inserted
# by one cannot be updated by another), after the existing accounts are locked (one order: the same
# accounts first, then the new ones in ascending id order). One that exists by then is not inserted: the
# count tells, and the statement fails.
_CREATE = """, n AS (
  SELECT * FROM unnest(string_to_array(%s, ',')::numeric[], string_to_array(%s, ',')::bigint[],
                       string_to_array(%s, ',')::bigint[], string_to_array(%s, ',')::bigint[],
                       string_to_array(%s, ',')::numeric[], string_to_array(%s, ',')::numeric[],
                       string_to_array(%s, ',')::bigint[], string_to_array(%s, ',')::numeric[],
                       string_to_array(%s, ',')::numeric[], string_to_array(%s, ',')::bigint[])
    AS n(id, ledger, code, flags, u128, u64, u32, d, c, ts)
), created AS (
  INSERT INTO ledger_account (id, ledger, code, flags, user_data_128, user_data_64, user_data_32, debits_pending,
                              debits_posted, credits_pending, credits_posted, timestamp)
  SELECT id, ledger, code, flags, u128, u64, u32, 0, d, 0, c, ts FROM n
  WHERE (SELECT count(*) FROM locked) >= 0 ORDER BY id
  ON CONFLICT (id) DO NOTHING RETURNING id
)"""
_CREATE_COUNT = ", (SELECT count(*) FROM created)"
