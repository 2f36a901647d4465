"""Money: every conversion and rounding in Tollgate happens here.

Rule (one, documented in docs/pricing.md): prices and quantities are exact ``Decimal``; charge
amounts stay exact until an invoice line is made; each line is then rounded once, to the currency's
minor unit, half away from zero (``ROUND_HALF_UP``). Totals are sums of rounded lines, never
rounded again. The ledger holds money as integers at ``LEDGER_SCALE`` (10^-12 of the major unit),
so a price of 0.000002 per token is exact there.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

# ISO 4217 minor-unit exponents for the currencies we accept; 2 is the common case.
MINOR_UNITS: dict[str, int] = {
    "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "NZD": 2, "SEK": 2, "NOK": 2, "DKK": 2,
    "PLN": 2, "CZK": 2, "INR": 2, "BRL": 2, "MXN": 2, "SGD": 2, "HKD": 2, "CNY": 2, "ZAR": 2,
    "NGN": 2, "GHS": 2, "KES": 2, "EGP": 2,  # with ZAR and USD: Paystack's currencies (NGN in kobo)
    "JPY": 0, "KRW": 0, "CLP": 0, "VND": 0, "ISK": 0,
    "BHD": 3, "KWD": 3, "JOD": 3, "OMR": 3, "TND": 3,
}
LEDGER_SCALE = 12


def is_currency(code: str) -> bool:
    return code in MINOR_UNITS


def minor_exponent(currency: str) -> int:
    return MINOR_UNITS[currency]


def round_to_minor(amount: Decimal, currency: str) -> Decimal:
    """The one rounding rule: to the currency's minor unit, half away from zero."""
    return amount.quantize(Decimal(1).scaleb(-minor_exponent(currency)), rounding=ROUND_HALF_UP)


def to_minor(amount: Decimal, currency: str) -> int:
    """A major-unit amount as an integer count of minor units (rounded by the one rule)."""
    return int(round_to_minor(amount, currency).scaleb(minor_exponent(currency)))


def from_minor(minor: int, currency: str) -> Decimal:
    return Decimal(minor).scaleb(-minor_exponent(currency))


def tax_minor(base_minor: int, rate_percent: Decimal, currency: str) -> int:
    """Tax on an invoice's taxable amount (minor units) at a percent rate: computed on the exact amount and
    rounded once, by the one rule, on the invoice (never per line, so the lines' rounding is not taxed twice)."""
    return to_minor(from_minor(base_minor, currency) * rate_percent / 100, currency)


def format_major(amount: Decimal, currency: str) -> str:
    """A decimal string in the major unit with exactly the currency's minor digits ("12.30")."""
    return str(round_to_minor(amount, currency))


def format_display(amount: Decimal, currency: str) -> str:
    """An amount as a document prints it: rounded by the one rule, with the currency's minor digits and
    thousands separators ("1,234.50", "JPY 1,235" -> "1,235")."""
    return f"{round_to_minor(amount, currency):,.{minor_exponent(currency)}f}"


def to_ledger_units(amount: Decimal) -> int:
    """Exact integer at the ledger scale; refuses amounts finer than 10^-12 instead of rounding."""
    scaled = amount.scaleb(LEDGER_SCALE)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} is finer than the ledger scale 10^-{LEDGER_SCALE}")
    return int(scaled)
