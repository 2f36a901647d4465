"""Number formatting for the dashboard: exact figures with thousands separators."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import template

from billing.catalog.money import format_display, format_major
from billing.common.fields import decimal_to_text

register = template.Library()


@register.filter
def qty(value: Any) -> str:
    """1234567.5 -> 1,234,567.5 (exact: no rounding, trailing zeros dropped)."""
    if value is None or value == "":
        return "-"
    text = decimal_to_text(Decimal(str(value)))
    sign = "-" if text.startswith("-") else ""
    whole, _, frac = text.lstrip("-").partition(".")
    whole = f"{int(whole):,}"
    return sign + whole + ("." + frac if frac else "")


@register.filter
def money(value: Any, currency: str = "USD") -> str:
    """A major-unit amount rounded to the currency's minor unit by the one rule (billing.catalog.money)."""
    if value is None or value == "":
        return "-"
    return format_major(Decimal(str(value)), currency or "USD")


@register.filter
def amount(value: Any, currency: str = "USD") -> str:
    """A major-unit amount as invoices print it: the one rounding rule and thousands separators."""
    if value is None or value == "":
        return "-"
    return format_display(Decimal(str(value)), currency or "USD")


@register.filter
def price(value: Any) -> str:
    """A unit price, exact."""
    return "-" if value is None else decimal_to_text(Decimal(str(value)))


@register.filter
def pct(value: Any) -> str:
    return f"{float(value):.1f}"


@register.filter
def cost(value: Any) -> str:
    """An attributed cost (an estimate, costs.py): four decimals, so a cheap run or step still shows."""
    if value is None or value == "":
        return "-"
    return f"{Decimal(str(value)).quantize(Decimal('0.0001')):f}"
