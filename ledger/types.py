"""The ledger's data types: TigerBeetle's model, in our own names so that only
``ledger/backends/tigerbeetle.py`` imports the client. Flag bits and result names are TigerBeetle's."""

from __future__ import annotations

import enum
from dataclasses import dataclass

AMOUNT_MAX = 2**128 - 1


class AccountFlags(enum.IntFlag):
    NONE = 0
    LINKED = 1 << 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 1
    CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 2
    HISTORY = 1 << 3


class TransferFlags(enum.IntFlag):
    NONE = 0
    LINKED = 1 << 0
    PENDING = 1 << 1
    POST_PENDING_TRANSFER = 1 << 2
    VOID_PENDING_TRANSFER = 1 << 3


class Status(enum.Enum):
    """Per-event results, named as TigerBeetle's CreateAccountStatus/CreateTransferStatus."""

    CREATED = "created"
    EXISTS = "exists"
    LINKED_EVENT_FAILED = "linked_event_failed"
    LINKED_EVENT_CHAIN_OPEN = "linked_event_chain_open"
    ID_MUST_NOT_BE_ZERO = "id_must_not_be_zero"
    ID_ALREADY_FAILED = "id_already_failed"
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    EXISTS_WITH_DIFFERENT_FLAGS = "exists_with_different_flags"
    EXISTS_WITH_DIFFERENT_PENDING_ID = "exists_with_different_pending_id"
    EXISTS_WITH_DIFFERENT_TIMEOUT = "exists_with_different_timeout"
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = "exists_with_different_debit_account_id"
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = "exists_with_different_credit_account_id"
    EXISTS_WITH_DIFFERENT_AMOUNT = "exists_with_different_amount"
    EXISTS_WITH_DIFFERENT_USER_DATA_128 = "exists_with_different_user_data_128"
    EXISTS_WITH_DIFFERENT_USER_DATA_64 = "exists_with_different_user_data_64"
    EXISTS_WITH_DIFFERENT_USER_DATA_32 = "exists_with_different_user_data_32"
    EXISTS_WITH_DIFFERENT_LEDGER = "exists_with_different_ledger"
    EXISTS_WITH_DIFFERENT_CODE = "exists_with_different_code"
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = "debit_account_id_must_not_be_zero"
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = "credit_account_id_must_not_be_zero"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    PENDING_ID_MUST_BE_ZERO = "pending_id_must_be_zero"
    PENDING_ID_MUST_NOT_BE_ZERO = "pending_id_must_not_be_zero"
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = "timeout_reserved_for_pending_transfer"
    LEDGER_MUST_NOT_BE_ZERO = "ledger_must_not_be_zero"
    CODE_MUST_NOT_BE_ZERO = "code_must_not_be_zero"
    DEBIT_ACCOUNT_NOT_FOUND = "debit_account_not_found"
    CREDIT_ACCOUNT_NOT_FOUND = "credit_account_not_found"
    ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = "accounts_must_have_the_same_ledger"
    TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = "transfer_must_have_the_same_ledger_as_accounts"
    PENDING_TRANSFER_NOT_FOUND = "pending_transfer_not_found"
    PENDING_TRANSFER_NOT_PENDING = "pending_transfer_not_pending"
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = "pending_transfer_has_different_debit_account_id"
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = "pending_transfer_has_different_credit_account_id"
    PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = "pending_transfer_has_different_ledger"
    PENDING_TRANSFER_HAS_DIFFERENT_CODE = "pending_transfer_has_different_code"
    EXCEEDS_PENDING_TRANSFER_AMOUNT = "exceeds_pending_transfer_amount"
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = "pending_transfer_has_different_amount"
    PENDING_TRANSFER_ALREADY_POSTED = "pending_transfer_already_posted"
    PENDING_TRANSFER_ALREADY_VOIDED = "pending_transfer_already_voided"
    PENDING_TRANSFER_EXPIRED = "pending_transfer_expired"
    EXCEEDS_CREDITS = "exceeds_credits"
    EXCEEDS_DEBITS = "exceeds_debits"
    OVERFLOW = "overflow"  # any of TigerBeetle's overflows_* (u128 balance or timeout overflow)
    # accounts
    EXISTS_WITH_DIFFERENT_ACCOUNT = "exists_with_different_flags_or_fields"

    @property
    def ok(self) -> bool:
        return self in (Status.CREATED, Status.EXISTS)


# A retry of an id that failed with one of these gets ID_ALREADY_FAILED (TigerBeetle's "transient" errors).
TRANSIENT = frozenset({Status.DEBIT_ACCOUNT_NOT_FOUND, Status.CREDIT_ACCOUNT_NOT_FOUND, Status.PENDING_TRANSFER_NOT_FOUND,
                       Status.EXCEEDS_CREDITS, Status.EXCEEDS_DEBITS})


@dataclass(frozen=True)
class Account:
    id: int
    ledger: int
    code: int
    flags: AccountFlags = AccountFlags.NONE
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0
    timestamp: int = 0

    @property
    def balance(self) -> int:
        """credits_posted - debits_posted (what an account bounded by its credits holds)."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """What a debits_must_not_exceed_credits account may still be debited."""
        return self.credits_posted - self.debits_posted - self.debits_pending


@dataclass(frozen=True, init=False)
class Transfer:
    id: int
    debit_account_id: int = 0
    credit_account_id: int = 0
    amount: int = 0
    ledger: int = 0
    code: int = 0
    flags: TransferFlags = TransferFlags.NONE
    pending_id: int = 0
    timeout: int = 0  # seconds, pending transfers only
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    timestamp: int = 0

    # The generated __init__ of a frozen dataclass sets each field through object.__setattr__, several
    # times slower than filling __dict__ at once, and ingest builds many; the signature, defaults,
    # equality, hash and immutability stay the dataclass's.
    def __init__(self, id: int, debit_account_id: int = 0, credit_account_id: int = 0, amount: int = 0,
                 ledger: int = 0, code: int = 0, flags: TransferFlags = TransferFlags.NONE, pending_id: int = 0,
                 timeout: int = 0, user_data_128: int = 0, user_data_64: int = 0, user_data_32: int = 0,
                 timestamp: int = 0) -> None:
        self.__dict__.update(id=id, debit_account_id=debit_account_id, credit_account_id=credit_account_id,
                             amount=amount, ledger=ledger, code=code, flags=flags, pending_id=pending_id, timeout=timeout,
                             user_data_128=user_data_128, user_data_64=user_data_64, user_data_32=user_data_32,
                             timestamp=timestamp)
