"""The tax terms an invoice is computed with: the customer's rate (or the installation's default), or no tax
and the reverse-charge text. The amount itself is computed in one place, ``money.tax_minor``."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from billing.customers.models import Customer


@dataclass(frozen=True)
class TaxTerms:
    rate: Decimal  # percent
    note: str | None = None  # the reverse-charge text, when no tax is charged for that reason


def tax_terms(*, customer: Customer) -> TaxTerms:
    if customer.tax_reverse_charge:
        return TaxTerms(Decimal(0), settings.TOLLGATE_REVERSE_CHARGE_TEXT)
    rate = customer.tax_rate if customer.tax_rate is not None else Decimal(str(settings.TOLLGATE_TAX_RATE or "0"))
    return TaxTerms(rate.normalize() if rate else Decimal(0))


NO_TAX = TaxTerms(Decimal(0))
