"""The ledger contract: the same tests against every backend available.

Always on the SQL backend (on whatever database the suite runs: SQLite or PostgreSQL). Also on a real
TigerBeetle cluster whenever TIGERBEETLE_ADDRESSES is set, and then an unreachable cluster FAILS the
suite (it never skips). Select it alone with ``pytest -m ledger_contract``.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from ledger.backends.base import LedgerBackend
from ledger.types import AMOUNT_MAX, Account, AccountFlags, Status, Transfer, TransferFlags

pytestmark = [pytest.mark.ledger_contract, pytest.mark.ledger, pytest.mark.django_db(transaction=True)]
LEDGER, CODE = 7, 1
BACKENDS = ["sql"] + (["tigerbeetle"] if os.environ.get("TIGERBEETLE_ADDRESSES") else [])


@pytest.fixture(params=BACKENDS)
def ledger(request: pytest.FixtureRequest) -> Iterator[LedgerBackend]:
    if request.param == "sql":
        from ledger.backends.sql import SqlLedger

        yield SqlLedger()
        return
    from ledger.backends.tigerbeetle import TigerBeetleLedger

    backend = TigerBeetleLedger(addresses=os.environ["TIGERBEETLE_ADDRESSES"],
                                cluster_id=int(os.environ.get("TIGERBEETLE_CLUSTER_ID", "0")), timeout=5)
    try:
        backend.ping()
    except Exception as exc:  # set but unreachable: fail loudly, never skip
        pytest.fail(f"TIGERBEETLE_ADDRESSES={os.environ['TIGERBEETLE_ADDRESSES']} is set but unreachable: {exc}")
    yield backend
    backend.close()  # a replica admits 32 clients: a test never leaves one open


def new_id() -> int:
    return secrets.randbits(127) + 1  # fresh per test: a real cluster keeps every id for ever


class Books:
    """Accounts made by one test, so it can check that debits equal credits afterwards."""

    def __init__(self, ledger: LedgerBackend) -> None:
        self.ledger = ledger
        self.ids: list[int] = []

    def account(self, flags: AccountFlags = AccountFlags.NONE, code: int = CODE) -> int:
        account_id = new_id()
        assert self.ledger.create_accounts([Account(id=account_id, ledger=LEDGER, code=code, flags=flags)]) == [Status.CREATED]
        self.ids.append(account_id)
        return account_id

    def get(self, account_id: int) -> Account:
        return self.ledger.lookup_accounts([account_id])[account_id]

    def balanced(self) -> bool:
        accounts = self.ledger.lookup_accounts(self.ids).values()
        return (sum(a.debits_posted for a in accounts) == sum(a.credits_posted for a in accounts)
                and sum(a.debits_pending for a in accounts) == sum(a.credits_pending for a in accounts))


@pytest.fixture
def books(ledger: LedgerBackend) -> Iterator[Books]:
    b = Books(ledger)
    yield b
    assert b.balanced(), "the books do not balance"


def funded(books: Books, amount: int) -> tuple[int, int]:
    """A bounded account holding ``amount`` (credited from an unbounded operator account)."""
    operator = books.account()
    bounded = books.account(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
    assert books.ledger.create_transfers([Transfer(id=new_id(), debit_account_id=operator, credit_account_id=bounded,
                                                   amount=amount, ledger=LEDGER, code=CODE)]) == [Status.CREATED]
    return operator, bounded


def t(debit: int, credit: int, amount: int, **kw: object) -> Transfer:
    return Transfer(id=kw.pop("id", None) or new_id(), debit_account_id=debit, credit_account_id=credit, amount=amount,  # type: ignore[arg-type]
                    ledger=LEDGER, code=CODE, **kw)  # type: ignore[arg-type]


def test_accounts_are_idempotent_by_id(ledger, books):
    account_id = new_id()
    account = Account(id=account_id, ledger=LEDGER, code=CODE)

    assert ledger.create_accounts([account]) == [Status.CREATED]
    assert ledger.create_accounts([account]) == [Status.EXISTS]
    assert ledger.create_accounts([Account(id=account_id, ledger=LEDGER, code=CODE,
                                           flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)]) == [
        Status.EXISTS_WITH_DIFFERENT_ACCOUNT]
    assert ledger.lookup_accounts([account_id, new_id()]).keys() == {account_id}


def test_transfers_are_idempotent_by_id(ledger, books):
    a, b = books.account(), books.account()
    transfer = t(a, b, 10, user_data_128=42)

    assert ledger.create_transfers([transfer]) == [Status.CREATED]
    assert ledger.create_transfers([transfer]) == [Status.EXISTS]
    assert ledger.create_transfers([t(a, b, 11, id=transfer.id, user_data_128=42)]) == [Status.EXISTS_WITH_DIFFERENT_AMOUNT]
    assert ledger.create_transfers([t(b, a, 10, id=transfer.id, user_data_128=42)]) == [
        Status.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID]
    assert ledger.create_transfers([t(a, b, 10, id=transfer.id, user_data_128=43)]) == [
        Status.EXISTS_WITH_DIFFERENT_USER_DATA_128]
    assert books.get(a).debits_posted == 10 and books.get(b).credits_posted == 10
    assert ledger.lookup_transfers([transfer.id])[transfer.id].amount == 10


def test_one_result_per_transfer_in_order(ledger, books):
    a, b = books.account(), books.account()

    results = ledger.create_transfers([t(a, b, 1), t(a, a, 1), t(a, new_id(), 1), t(a, b, 2)])

    assert results == [Status.CREATED, Status.ACCOUNTS_MUST_BE_DIFFERENT, Status.CREDIT_ACCOUNT_NOT_FOUND, Status.CREATED]
    assert books.get(a).debits_posted == 3


def test_bounded_account_never_goes_below_zero_and_a_failed_id_stays_failed(ledger, books):
    operator, wallet = funded(books, 100)
    too_much = t(wallet, operator, 101)

    assert ledger.create_transfers([too_much]) == [Status.EXCEEDS_CREDITS]
    assert ledger.create_transfers([too_much]) == [Status.ID_ALREADY_FAILED]
    assert ledger.create_transfers([t(wallet, operator, 100)]) == [Status.CREATED]
    assert ledger.create_transfers([t(wallet, operator, 1)]) == [Status.EXCEEDS_CREDITS]
    assert books.get(wallet).balance == 0


def test_credits_must_not_exceed_debits(ledger, books):
    source = books.account()
    capped = books.account(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
    ledger.create_transfers([t(capped, source, 5)])

    assert ledger.create_transfers([t(source, capped, 6)]) == [Status.EXCEEDS_DEBITS]
    assert ledger.create_transfers([t(source, capped, 5)]) == [Status.CREATED]


def test_pending_amounts_count_against_the_bound_and_post_in_full(ledger, books):
    operator, wallet = funded(books, 100)
    hold = t(wallet, operator, 60, flags=TransferFlags.PENDING)

    assert ledger.create_transfers([hold]) == [Status.CREATED]
    assert (books.get(wallet).debits_pending, books.get(wallet).available) == (60, 40)
    assert ledger.create_transfers([t(wallet, operator, 41)]) == [Status.EXCEEDS_CREDITS]
    post = Transfer(id=new_id(), pending_id=hold.id, amount=AMOUNT_MAX, flags=TransferFlags.POST_PENDING_TRANSFER)
    assert ledger.create_transfers([post]) == [Status.CREATED]
    assert (books.get(wallet).debits_pending, books.get(wallet).debits_posted) == (0, 60)
    assert ledger.create_transfers([Transfer(id=new_id(), pending_id=hold.id, amount=AMOUNT_MAX,
                                             flags=TransferFlags.POST_PENDING_TRANSFER)]) == [
        Status.PENDING_TRANSFER_ALREADY_POSTED]
    assert ledger.create_transfers([post]) == [Status.EXISTS]


def test_partial_post_releases_the_rest_and_void_releases_all(ledger, books):
    operator, wallet = funded(books, 100)
    first = t(wallet, operator, 50, flags=TransferFlags.PENDING)
    second = t(wallet, operator, 30, flags=TransferFlags.PENDING)
    ledger.create_transfers([first, second])

    over = Transfer(id=new_id(), pending_id=first.id, amount=51, flags=TransferFlags.POST_PENDING_TRANSFER)
    assert ledger.create_transfers([over]) == [Status.EXCEEDS_PENDING_TRANSFER_AMOUNT]
    assert ledger.create_transfers([Transfer(id=new_id(), pending_id=first.id, amount=20,
                                             flags=TransferFlags.POST_PENDING_TRANSFER)]) == [Status.CREATED]
    assert ledger.create_transfers([Transfer(id=new_id(), pending_id=second.id,
                                             flags=TransferFlags.VOID_PENDING_TRANSFER)]) == [Status.CREATED]
    wallet_now = books.get(wallet)
    assert (wallet_now.debits_pending, wallet_now.debits_posted, wallet_now.available) == (0, 20, 80)
    assert ledger.create_transfers([Transfer(id=new_id(), pending_id=second.id, amount=AMOUNT_MAX,
                                             flags=TransferFlags.POST_PENDING_TRANSFER)]) == [
        Status.PENDING_TRANSFER_ALREADY_VOIDED]
    assert ledger.create_transfers([Transfer(id=new_id(), pending_id=new_id(), amount=AMOUNT_MAX,
                                             flags=TransferFlags.POST_PENDING_TRANSFER)]) == [
        Status.PENDING_TRANSFER_NOT_FOUND]


def test_a_pending_transfer_expires_and_gives_its_amount_back(ledger, books):
    operator, wallet = funded(books, 100)
    hold = t(wallet, operator, 70, flags=TransferFlags.PENDING, timeout=1)
    ledger.create_transfers([hold])
    assert books.get(wallet).available == 30

    deadline = time.monotonic() + 10
    while books.get(wallet).debits_pending and time.monotonic() < deadline:
        time.sleep(0.25)
        ledger.expire_pending()

    assert books.get(wallet).available == 100
    assert ledger.create_transfers([Transfer(id=new_id(), pending_id=hold.id, amount=AMOUNT_MAX,
                                             flags=TransferFlags.POST_PENDING_TRANSFER)]) == [
        Status.PENDING_TRANSFER_EXPIRED]


def test_linked_chain_succeeds_or_fails_as_one(ledger, books):
    operator, wallet = funded(books, 10)
    quota_op, quota = funded(books, 5)

    failed = ledger.create_transfers([t(wallet, operator, 3, flags=TransferFlags.LINKED), t(quota, quota_op, 6)])
    passed = ledger.create_transfers([t(wallet, operator, 3, flags=TransferFlags.LINKED), t(quota, quota_op, 5)])
    open_chain = ledger.create_transfers([t(wallet, operator, 1, flags=TransferFlags.LINKED)])

    assert failed == [Status.LINKED_EVENT_FAILED, Status.EXCEEDS_CREDITS]
    assert passed == [Status.CREATED, Status.CREATED]
    assert open_chain == [Status.LINKED_EVENT_CHAIN_OPEN]
    assert books.get(wallet).balance == 7 and books.get(quota).balance == 0


def test_history_lists_an_accounts_transfers_in_order(ledger, books):
    a, b = books.account(AccountFlags.HISTORY), books.account()
    transfers = [t(a, b, 1), t(b, a, 2), t(a, b, 3)]
    ledger.create_transfers(transfers)

    history = ledger.account_transfers(a)

    assert [x.id for x in history] == [x.id for x in transfers]
    assert [x.amount for x in history] == [1, 2, 3]


def test_many_threads_never_overdraw_a_bounded_account(ledger, books):
    operator, wallet = funded(books, 500)
    lock = threading.Lock()
    results: list[Status] = []

    def spend(_: int) -> None:
        try:
            for _ in range(10):
                batch = [t(wallet, operator, 3) for _ in range(2)]
                statuses = ledger.create_transfers(batch)
                with lock:
                    results.extend(statuses)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(spend, range(16)))

    created = results.count(Status.CREATED)
    assert set(results) <= {Status.CREATED, Status.EXCEEDS_CREDITS}
    assert created == 500 // 3  # 166 transfers of 3 fit in 500, and not one more
    assert books.get(wallet).debits_posted == created * 3 <= 500
