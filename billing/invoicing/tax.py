"""The tax terms an invoice is computed with: no tax and the reverse-charge text for a reverse-charge customer,
else the customer's own rate, else the plan's (its rate-card version's ``tax_rate``), else the installation's
default (``TOLLGATE_TAX_RATE``). The amount itself is computed in one place, ``money.tax_minor``."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from billing.customers.models import Customer


@dataclass(frozen=True)
class TaxTerms:
    rate: Decimal  # percent
    note: str | None = None  # the reverse-charge text, when no tax is charged for that reason


def tax_terms(*, customer: Customer, plan_rate: Decimal | None = None) -> TaxTerms:
    """``plan_rate``: the tax rate of the plan's version the invoice is priced with (None: it sets none)."""
    if customer.tax_reverse_charge:
        return TaxTerms(Decimal(0), settings.TOLLGATE_REVERSE_CHARGE_TEXT)
    if customer.tax_rate is not None:
        rate = customer.tax_rate
    elif plan_rate is not None:
        rate = plan_rate
    else:
        rate = Decimal(str(settings.TOLLGATE_TAX_RATE or "0"))
    return TaxTerms(rate.normalize() if rate else Decimal(0))


NO_TAX = TaxTerms(Decimal(0))
