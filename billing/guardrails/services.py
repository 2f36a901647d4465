from __future__ import annotations

from decimal import Decimal

from django.db import IntegrityError, transaction

from billing.audit.services import audit_created
from billing.catalog import money
from billing.common.errors import CommonCode, DomainError, validation_error
from billing.customers.models import Customer
from billing.guardrails import accounts as acc
from billing.guardrails.models import CreditGrant
from ledger.backends import get_ledger
from ledger.codes import AccountCode, TransferCode, currency_ledger
from ledger.ids import derive
from ledger.types import Status, Transfer


def credits_grant(*, customer: Customer, amount: Decimal, currency: str, idempotency_key: str, reason: str = "",
                  actor: str = "") -> tuple[CreditGrant, bool]:
    """Grant or top up prepaid credits. The ledger transfer id derives from (customer, key): a retry
    with the same key and amount is harmless, with another amount a 409."""
    if not money.is_currency(currency):
        raise validation_error({"currency": [f"Unsupported currency '{currency}'."]})
    if not amount.is_finite() or amount <= 0:
        raise validation_error({"amount": ["Must be a positive amount."]})
    try:
        units = money.to_ledger_units(amount)
    except ValueError:
        raise validation_error({"amount": [f"At most {money.LEDGER_SCALE} decimal places."]}) from None
    existing = CreditGrant.objects.filter(customer=customer, idempotency_key=idempotency_key).first()
    if existing is not None and (existing.amount, existing.currency) != (amount, currency):
        raise DomainError(CommonCode.IDEMPOTENCY_CONFLICT, "This idempotency_key was used for another grant.")
    ledger = currency_ledger(currency)
    grants = acc.operator_account(AccountCode.OPERATOR_GRANTS, ledger)
    acc.ensure([grants, acc.wallet_account(customer.pk, currency)], [])
    status = get_ledger().create_transfers([Transfer(
        id=derive("credit-grant", customer.pk, idempotency_key), debit_account_id=grants.id,
        credit_account_id=acc.Ids(customer.pk).wallet(currency), amount=units, ledger=ledger,
        code=TransferCode.CREDIT_GRANT, user_data_128=customer.pk)])[0]
    if status.value.startswith("exists_with_different"):
        raise DomainError(CommonCode.IDEMPOTENCY_CONFLICT, "This idempotency_key was used for another grant.")
    if not status.ok:
        raise RuntimeError(f"ledger refused the grant: {status.value}")
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            grant = CreditGrant.objects.create(customer=customer, idempotency_key=idempotency_key, amount=amount,
                                               currency=currency, reason=reason)
            audit_created(grant, action="credits.granted", actor=actor)
            return grant, status is Status.CREATED
    except IntegrityError:  # the same grant recorded concurrently
        return CreditGrant.objects.get(customer=customer, idempotency_key=idempotency_key), False
