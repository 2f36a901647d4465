"""Tables of the embedded SQL ledger backend (ledger/backends/sql/). TigerBeetle keeps the same
state itself; nothing else reads these tables directly."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q

U128_DIGITS = 39


class U128Field(models.Field):
    """An unsigned 128-bit integer: numeric(39,0) on PostgreSQL, zero-padded text on SQLite (so that
    equality and ORDER BY, used for the fixed locking order, stay exact)."""

    def get_internal_type(self) -> str:
        return "U128Field"

    def db_type(self, connection: BaseDatabaseWrapper) -> str:
        return "numeric(39,0)" if connection.vendor == "postgresql" else "varchar(39)"

    def rel_db_type(self, connection: BaseDatabaseWrapper) -> str:
        return self.db_type(connection)

    def from_db_value(self, value: Any, expression: Any, connection: BaseDatabaseWrapper) -> int | None:
        return None if value is None else int(value)

    def to_python(self, value: Any) -> int | None:
        return None if value is None else int(value)

    def get_db_prep_value(self, value: Any, connection: BaseDatabaseWrapper, prepared: bool = False) -> Any:
        if value is None:
            return None
        number = int(value)
        if not 0 <= number < 2**128:
            raise ValueError(f"{number} is not an unsigned 128-bit integer")
        return number if connection.vendor == "postgresql" else str(number).zfill(U128_DIGITS)


class LedgerAccount(models.Model):
    id = U128Field(primary_key=True)
    ledger = models.PositiveIntegerField()
    code = models.PositiveIntegerField()
    flags = models.PositiveIntegerField(default=0)
    user_data_128 = U128Field(default=0)
    user_data_64 = U128Field(default=0)
    user_data_32 = models.PositiveBigIntegerField(default=0)
    debits_pending = U128Field(default=0)
    debits_posted = U128Field(default=0)
    credits_pending = U128Field(default=0)
    credits_posted = U128Field(default=0)
    timestamp = models.BigIntegerField()

    class Meta:
        db_table = "ledger_account"

    def __str__(self) -> str:
        return f"account {self.id:x} (ledger {self.ledger}, code {self.code})"


class LedgerTransfer(models.Model):
    class State(models.IntegerChoices):
        POSTED = 0  # a plain (single-phase) transfer, or a post/void of a pending one
        PENDING = 1
        PENDING_POSTED = 2
        PENDING_VOIDED = 3
        PENDING_EXPIRED = 4

    id = U128Field(primary_key=True)
    debit_account_id = U128Field()
    credit_account_id = U128Field()
    amount = U128Field()
    requested_amount = U128Field()  # as submitted (a post may ask for AMOUNT_MAX): for idempotency checks
    pending_id = U128Field(default=0)
    ledger = models.PositiveIntegerField()
    code = models.PositiveIntegerField()
    flags = models.PositiveIntegerField(default=0)
    timeout = models.PositiveIntegerField(default=0)
    user_data_128 = U128Field(default=0)
    user_data_64 = U128Field(default=0)
    user_data_32 = models.PositiveBigIntegerField(default=0)
    timestamp = models.BigIntegerField()
    state = models.PositiveSmallIntegerField(choices=State.choices, default=State.POSTED)
    expires_at = models.BigIntegerField(null=True, blank=True)  # ns, pending transfers with a timeout

    class Meta:
        db_table = "ledger_transfer"
        indexes = [
            models.Index(fields=["debit_account_id", "timestamp"], name="ledger_transfer_debit"),
            models.Index(fields=["credit_account_id", "timestamp"], name="ledger_transfer_credit"),
            # Only pending transfers are ever looked up by expiry: the partial index is not written for the
            # posted ones (every usage transfer), a quarter of the index work of a limited ingest batch.
            models.Index(fields=["expires_at"], name="ledger_transfer_pending_due", condition=Q(state=1)),  # 1 = State.PENDING
        ]

    def __str__(self) -> str:
        return f"transfer {self.id:x}: {self.amount} from {self.debit_account_id:x} to {self.credit_account_id:x}"


class LedgerFailedTransfer(models.Model):
    """Ids that failed with a transient error: a retry answers ``id_already_failed`` (as TigerBeetle)."""

    id = U128Field(primary_key=True)
    status = models.CharField(max_length=64)

    class Meta:
        db_table = "ledger_failed_transfer"

    def __str__(self) -> str:
        return f"failed transfer {self.id:x}: {self.status}"


class Installation(models.Model):
    """This installation's ledger namespace: one row, made by the migration that added it. A new
    installation gets a random one, so that another installation (or this one's database recreated)
    on the same TigerBeetle cluster starts from empty accounts; one that already held usage keeps ''
    (the ids it has always had). ``TOLLGATE_LEDGER_NAMESPACE`` overrides it (a restore onto a fresh
    database that must reach the ledger state it had)."""

    namespace = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "ledger_installation"

    def __str__(self) -> str:
        return f"installation {self.namespace or '(legacy)'}"

    @classmethod
    def current_namespace(cls) -> str:
        from django.conf import settings

        override = getattr(settings, "TOLLGATE_LEDGER_NAMESPACE", None)
        if override is not None:
            return str(override)
        row = cls.objects.order_by("pk").first()
        if row is None:  # only before migrations ran: make it as the migration would
            row, _ = cls.objects.get_or_create(pk=1, defaults={"namespace": new_namespace()})
        return row.namespace


def new_namespace() -> str:
    import uuid

    return uuid.uuid4().hex[:16]


class HeldPost(models.Model):
    """The outbox of a booking in two phases on a ledger outside the database (ledger.holds): the posts of
    pending holds whose business rows this database committed. Written in the same transaction as those
    rows; a sweep posts what the writer did not live to post, then deletes the row."""

    transfers = models.JSONField()  # [[id, pending_id, ledger, code], ...] as decimal strings
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        db_table = "ledger_held_post"

    def __str__(self) -> str:
        return f"held post {self.pk} ({len(self.transfers)} transfers)"
