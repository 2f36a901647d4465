"""The SQL backend's two ways of applying a batch give the same answers.

A batch of fresh single-phase transfers is applied in aggregate (one check of each bounded account's
headroom against the batch's total, one update per account) when every bounded account can take the
whole batch; otherwise it goes transfer by transfer. These tests pin that the shortcut never changes
an outcome: not which event is refused, not a balance, not the order of the history.
"""

from __future__ import annotations

import random
import secrets

import pytest

from ledger.backends.sql import SqlLedger
from ledger.backends.sql import batch as sql_batch
from ledger.types import Account, AccountFlags, Status, Transfer, TransferFlags

pytestmark = [pytest.mark.ledger_contract, pytest.mark.django_db(transaction=True)]
LEDGER, CODE = 7, 1
BOUNDED = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS


def new_id() -> int:
    return secrets.randbits(127) + 1


class Spy:
    """Counts how batches were applied (in aggregate or transfer by transfer)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, aggregate: bool = True) -> None:
        self.aggregate = 0
        original = sql_batch._Batch._run_plain
        spy = self

        def run_plain(batch: sql_batch._Batch, plain: sql_batch._Plain) -> bool:
            done = aggregate and original(batch, plain)
            spy.aggregate += done
            return done

        monkeypatch.setattr(sql_batch._Batch, "_run_plain", run_plain)


def make_books(ledger: SqlLedger, funds: list[int]) -> tuple[int, list[int]]:
    """An unbounded operator account and one bounded account per amount in ``funds``, funded from it."""
    operator = new_id()
    bounded = [new_id() for _ in funds]
    assert ledger.create_accounts([Account(id=operator, ledger=LEDGER, code=CODE)]
                                  + [Account(id=b, ledger=LEDGER, code=CODE, flags=BOUNDED) for b in bounded]) == [
        Status.CREATED] * (1 + len(bounded))
    assert ledger.create_transfers([Transfer(id=new_id(), debit_account_id=operator, credit_account_id=b, amount=f,
                                             ledger=LEDGER, code=CODE) for b, f in zip(bounded, funds, strict=True)]
                                   ) == [Status.CREATED] * len(bounded)
    return operator, bounded


def chains(rng: random.Random, operator: int, bounded: list[int], events: int) -> list[Transfer]:
    """Per event a linked chain debiting one to all of the bounded accounts (as ingest does)."""
    out: list[Transfer] = []
    for _ in range(events):
        legs = rng.sample(bounded, rng.randint(1, len(bounded)))
        for i, account in enumerate(legs):
            out.append(Transfer(id=new_id(), debit_account_id=account, credit_account_id=operator,
                                amount=rng.randint(0, 30), ledger=LEDGER, code=CODE,
                                flags=TransferFlags.LINKED if i < len(legs) - 1 else TransferFlags.NONE))
    return out


def renamed(transfers: list[Transfer], names: dict[int, int]) -> list[Transfer]:
    return [Transfer(id=new_id(), debit_account_id=names[t.debit_account_id], credit_account_id=names[t.credit_account_id],
                     amount=t.amount, ledger=t.ledger, code=t.code, flags=t.flags) for t in transfers]


def test_aggregate_and_transfer_by_transfer_give_the_same_outcomes(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [compare_paths(seed, monkeypatch) for seed in range(12)]

    # the comparison is not vacuous: both paths ran, and within several seeds
    assert set().union(*paths) == {"aggregate", "in order"}
    assert sum(len(p) == 2 for p in paths) >= 3


def compare_paths(seed: int, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Random batches on two identical books, one applying batches in aggregate when it may, one always
    in order: the same statuses and balances after each batch. Returns the paths the first one took."""
    rng = random.Random(seed)
    ledger = SqlLedger()
    funds = [rng.randint(0, 600) for _ in range(3)]
    op_a, fast_books = make_books(ledger, funds)
    op_b, slow_books = make_books(ledger, funds)
    names = {op_a: op_b, **dict(zip(fast_books, slow_books, strict=True))}
    paths: set[str] = set()

    for _round in range(4):
        batch = chains(rng, op_a, fast_books, rng.randint(1, 40))
        twin = renamed(batch, names)
        spy = Spy(monkeypatch)
        fast = ledger.create_transfers(batch)
        monkeypatch.undo()
        slow_spy = Spy(monkeypatch, aggregate=False)
        slow = ledger.create_transfers(twin)
        monkeypatch.undo()
        assert fast == slow
        assert slow_spy.aggregate == 0
        if spy.aggregate:
            assert all(s is Status.CREATED for s in fast)
        paths.add("aggregate" if spy.aggregate else "in order")
        accounts = ledger.lookup_accounts([op_a, op_b, *fast_books, *slow_books])
        for a, b in names.items():
            assert (accounts[a].debits_posted, accounts[a].credits_posted) == (
                accounts[b].debits_posted, accounts[b].credits_posted)
    return paths


def test_a_batch_that_fits_is_applied_in_aggregate_with_its_history_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a quota of 100 and a batch of 10 two-leg chains of 10 that exactly uses it
    ledger = SqlLedger()
    operator, (quota, counter) = make_books(ledger, [100, 1000])
    batch = []
    for _ in range(10):
        batch += [Transfer(id=new_id(), debit_account_id=counter, credit_account_id=operator, amount=10, ledger=LEDGER,
                           code=CODE, flags=TransferFlags.LINKED),
                  Transfer(id=new_id(), debit_account_id=quota, credit_account_id=operator, amount=10, ledger=LEDGER,
                           code=CODE)]
    spy = Spy(monkeypatch)

    # when
    statuses = ledger.create_transfers(batch)

    # then
    assert statuses == [Status.CREATED] * 20
    assert spy.aggregate == 1
    assert ledger.lookup_accounts([quota])[quota].available == 0
    history = ledger.account_transfers(quota)
    assert [t.id for t in history[1:]] == [t.id for t in batch[1::2]]  # after the funding, in batch order
    stamps = [t.timestamp for t in ledger.account_transfers(operator, limit=1000)]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert ledger.create_transfers(batch[:2]) == [Status.EXISTS, Status.EXISTS]


def test_when_a_limit_binds_the_exact_event_that_exceeds_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a quota of 25 and three events of 10
    ledger = SqlLedger()
    operator, (quota,) = make_books(ledger, [25])
    batch = [Transfer(id=new_id(), debit_account_id=quota, credit_account_id=operator, amount=10, ledger=LEDGER,
                      code=CODE) for _ in range(3)]
    spy = Spy(monkeypatch)

    # when
    statuses = ledger.create_transfers(batch)

    # then: the third is refused, the first two are in
    assert statuses == [Status.CREATED, Status.CREATED, Status.EXCEEDS_CREDITS]
    assert spy.aggregate == 0
    assert ledger.lookup_accounts([quota])[quota].available == 5
    assert ledger.create_transfers([batch[2]]) == [Status.ID_ALREADY_FAILED]


# --- book_checked: the batch debit's one statement ---------------------------------------------------------

def test_book_checked_books_fresh_transfers_in_the_callers_transaction() -> None:
    # given two funded bounded accounts
    from django.db import transaction

    ledger = SqlLedger()
    operator, (a, b) = make_books(ledger, [50, 50])
    batch = [Transfer(id=new_id(), debit_account_id=a, credit_account_id=operator, amount=30, ledger=LEDGER, code=CODE,
                      user_data_128=5, user_data_64=6, user_data_32=7),
             Transfer(id=new_id(), debit_account_id=b, credit_account_id=operator, amount=50, ledger=LEDGER, code=CODE)]

    # when the caller locks, then books, in one transaction
    with transaction.atomic():
        ledger.lock_accounts([a, b])
        ledger.book_checked(batch)

    # then the balances moved on both sides and the transfers read back as create_transfers would store them
    accounts = ledger.lookup_accounts([a, b, operator])
    assert (accounts[a].available, accounts[b].available) == (20, 0)
    assert accounts[operator].credits_posted == 80 and accounts[operator].debits_posted == 100
    stored = ledger.lookup_transfers([t.id for t in batch])
    assert stored[batch[0].id].amount == 30
    assert (stored[batch[0].id].user_data_128, stored[batch[0].id].user_data_64, stored[batch[0].id].user_data_32) == (5, 6, 7)
    assert [t.id for t in ledger.account_transfers(a)][-1] == batch[0].id
    # and a retry of the same ids through create_transfers finds them
    assert ledger.create_transfers(batch) == [Status.EXISTS, Status.EXISTS]


@pytest.mark.parametrize("case", ["over_limit", "id_exists", "id_failed", "missing_account", "other_ledger", "linked"])
def test_book_checked_refuses_the_whole_batch_and_rolls_the_caller_back(case: str) -> None:
    # given a bounded account holding 10, and a row the caller wrote in the same transaction
    from django.db import transaction

    from ledger.backends.base import LedgerRefused
    from ledger.models import LedgerAccount

    ledger = SqlLedger()
    operator, (quota,) = make_books(ledger, [10])
    good = Transfer(id=new_id(), debit_account_id=quota, credit_account_id=operator, amount=4, ledger=LEDGER, code=CODE)
    bad = Transfer(id=new_id(), debit_account_id=quota, credit_account_id=operator, amount=4, ledger=LEDGER, code=CODE)
    if case == "over_limit":
        bad = Transfer(id=bad.id, debit_account_id=quota, credit_account_id=operator, amount=7, ledger=LEDGER, code=CODE)
    elif case == "id_exists":
        assert ledger.create_transfers([bad]) == [Status.CREATED]
    elif case == "id_failed":
        too_much = Transfer(id=bad.id, debit_account_id=quota, credit_account_id=operator, amount=99, ledger=LEDGER, code=CODE)
        assert ledger.create_transfers([too_much]) == [Status.EXCEEDS_CREDITS]
    elif case == "missing_account":
        bad = Transfer(id=bad.id, debit_account_id=quota, credit_account_id=new_id(), amount=1, ledger=LEDGER, code=CODE)
    elif case == "other_ledger":
        bad = Transfer(id=bad.id, debit_account_id=quota, credit_account_id=operator, amount=1, ledger=LEDGER + 1, code=CODE)
    elif case == "linked":
        bad = Transfer(id=bad.id, debit_account_id=quota, credit_account_id=operator, amount=1, ledger=LEDGER, code=CODE,
                       flags=TransferFlags.LINKED)
    before = ledger.lookup_accounts([quota, operator])
    marker = new_id()

    # when the caller books the batch after writing a row of its own
    with pytest.raises(LedgerRefused), transaction.atomic():
        LedgerAccount.objects.create(id=marker, ledger=LEDGER, code=CODE, timestamp=1)
        ledger.lock_accounts([quota])
        ledger.book_checked([good, bad])

    # then nothing of the transaction is left: no transfer, no balance, not the caller's row
    assert ledger.lookup_accounts([quota, operator]) == before
    assert good.id not in ledger.lookup_transfers([good.id])
    assert not LedgerAccount.objects.filter(pk=marker).exists()


def test_book_checked_holds_the_ledger_to_what_the_caller_expected() -> None:
    # given a counter-like account debited 5 so far
    from django.db import transaction

    from ledger.backends.base import LedgerRefused

    ledger = SqlLedger()
    operator, (counter,) = make_books(ledger, [100])
    assert ledger.create_transfers([Transfer(id=new_id(), debit_account_id=counter, credit_account_id=operator,
                                             amount=5, ledger=LEDGER, code=CODE)]) == [Status.CREATED]

    def book(low: int | None, high: int | None) -> None:
        with transaction.atomic():
            ledger.book_checked([Transfer(id=new_id(), debit_account_id=counter, credit_account_id=operator, amount=1,
                                          ledger=LEDGER, code=CODE)], {counter: (low, high)})

    # when a booking expects its debits to lie where they are, or not
    book(5, 5)
    book(0, None)
    with pytest.raises(LedgerRefused):
        book(0, 6)  # it is 7 by now
    with pytest.raises(LedgerRefused):
        book(8, None)
    with pytest.raises(ValueError, match="none of the transfers"), transaction.atomic():
        ledger.book_checked([], {counter: (0, None)})

    # then only the two that held were booked
    assert ledger.lookup_accounts([counter])[counter].debits_posted == 7


def test_book_checked_needs_the_callers_transaction() -> None:
    with pytest.raises(RuntimeError, match="transaction"):
        SqlLedger().book_checked([])


def test_fresh_transfers_skip_the_id_lookups_yet_a_stored_id_still_answers_exists() -> None:
    """``fresh`` skips reading the ids first; were one stored after all, its insert fails on the id's
    uniqueness and the retry reads them: the answer is the one a plain call gives, nothing booked twice."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from ledger.models import LedgerTransfer

    ledger = SqlLedger()
    operator, (bounded,) = make_books(ledger, [100])
    hold = Transfer(id=new_id(), debit_account_id=bounded, credit_account_id=operator, amount=30, ledger=LEDGER,
                    code=CODE, flags=TransferFlags.PENDING, timeout=600)
    with CaptureQueriesContext(connection) as queries:
        assert ledger.create_transfers([hold], fresh=True) == [Status.CREATED]
    assert not [q for q in queries.captured_queries if "ledger_failed_transfer" in q["sql"]]
    assert ledger.create_transfers([hold], fresh=True) == [Status.EXISTS]  # not fresh after all: read, then answered
    assert LedgerTransfer.objects.filter(pk=hold.id).count() == 1
    assert ledger.lookup_accounts([bounded])[bounded].debits_pending == 30
    post = Transfer(id=new_id(), pending_id=hold.id, amount=30, flags=TransferFlags.POST_PENDING_TRANSFER)
    assert ledger.create_transfers([post]) == [Status.CREATED]  # and the hold closes as any other
    assert LedgerTransfer.objects.get(pk=hold.id).state == LedgerTransfer.State.PENDING_POSTED
    account = ledger.lookup_accounts([bounded])[bounded]
    assert (account.debits_pending, account.debits_posted) == (0, 30)
