"""``ExactDecimalField``: a decimal that is exact on every database Tollgate runs on.

PostgreSQL stores it as ``numeric(38, 18)``, exact by nature. SQLite has no exact decimal type
(Django's ``DecimalField`` goes through a float with 15 significant digits there), so on SQLite
the value is kept as canonical text and read back with ``Decimal(text)``. Consequence: on SQLite,
do not filter or aggregate this column in SQL; the selectors sum it in Python there
(``billing.common.fields.sql_decimal_ok``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper

MAX_DIGITS = 38
DECIMAL_PLACES = 18
QUANTUM = Decimal(1).scaleb(-DECIMAL_PLACES)
MAX_INTEGER_DIGITS = MAX_DIGITS - DECIMAL_PLACES


# Both answers below depend on a Decimal's value alone (equal values: the same canonical text, the same
# verdict), and ingest meets the same few quantities over and over: they are remembered, by value, a
# bounded number of them (reading a value's digits costs about 1.5 us; a dict lookup a tenth of that).
_MEMO_SIZE = 4096
_TEXTS: dict[Decimal, str] = {}
_CHECKS: dict[Decimal, str | None] = {}


def decimal_to_text(value: Decimal) -> str:
    """Canonical, exponent-free text of a finite Decimal, trailing zeros removed."""
    text = _TEXTS.get(value)
    if text is None:
        text = _decimal_to_text(value)
        if len(_TEXTS) >= _MEMO_SIZE:
            _TEXTS.clear()
        _TEXTS[value] = text
    return text


def _decimal_to_text(value: Decimal) -> str:
    if not value:  # a zero may carry any exponent: 0E-999999999 would be written with a billion zeros
        return "0"
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if exponent < -2 * DECIMAL_PLACES:  # "1.000...0": its trailing zeros off first, without a decimal context
        kept = len("".join(map(str, digits)).rstrip("0"))
        value = Decimal((sign, digits[:kept], exponent + len(digits) - kept))
    if abs(value.adjusted()) > 1000 or value.as_tuple().exponent < -1000:  # type: ignore[operator]
        raise ValueError(f"{value!r} is far outside any amount or quantity: check it first (check_decimal)")
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in {"-0", ""} else text


def check_decimal(value: Decimal) -> str | None:
    """Why ``value`` cannot be stored exactly, or None. Read from its digits and exponent alone, with no
    arithmetic: ``1e999999999`` or ``1e-999999999`` would overflow (or silently round) in a decimal context."""
    if not value.is_finite():  # before the memo: a signalling NaN cannot be hashed
        return "must be a finite number"
    try:
        return _CHECKS[value]
    except KeyError:
        problem = _check_decimal(value)
    if len(_CHECKS) >= _MEMO_SIZE:
        _CHECKS.clear()
    _CHECKS[value] = problem
    return problem


def _check_decimal(value: Decimal) -> str | None:
    _, digits, exponent = value.as_tuple()
    significant = "".join(map(str, digits)).rstrip("0")
    if not significant:  # zero, whatever its exponent
        return None
    assert isinstance(exponent, int)
    if exponent + (len(digits) - len(significant)) < -DECIMAL_PLACES:
        return f"has more than {DECIMAL_PLACES} decimal places"
    if value.adjusted() >= MAX_INTEGER_DIGITS:
        return f"has more than {MAX_INTEGER_DIGITS} digits before the decimal point"
    return None


def sql_decimal_ok(connection: BaseDatabaseWrapper) -> bool:
    """Whether SUM/MAX/comparisons over ExactDecimalField are exact in SQL on this database."""
    return connection.vendor == "postgresql"


class ExactDecimalField(models.Field):
    description = "Exact decimal (numeric on PostgreSQL, canonical text on SQLite)"

    def get_internal_type(self) -> str:
        return "ExactDecimalField"

    def db_type(self, connection: BaseDatabaseWrapper) -> str:
        if connection.vendor == "postgresql":
            return f"numeric({MAX_DIGITS},{DECIMAL_PLACES})"
        return "text"

    def rel_db_type(self, connection: BaseDatabaseWrapper) -> str:
        return self.db_type(connection)

    def from_db_value(self, value: Any, expression: Any, connection: BaseDatabaseWrapper) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, Decimal):  # PostgreSQL: numeric(38,18) pads with zeros
            return Decimal(decimal_to_text(value))
        return Decimal(str(value))

    def to_python(self, value: Any) -> Decimal | None:
        if value is None or isinstance(value, Decimal):
            return value
        return Decimal(str(value))

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None:
            return None
        return decimal_to_text(self.to_python(value))  # type: ignore[arg-type]

    def formfield(self, **kwargs: Any) -> Any:
        from django import forms

        return super().formfield(**{"form_class": forms.DecimalField, **kwargs})


def aware_utc(value: Any) -> Any:
    """A datetime column read with a plain cursor, as an aware UTC datetime: PostgreSQL hands back aware
    ones, SQLite naive UTC datetimes (or text)."""
    if value is None:
        return None
    if isinstance(value, str):
        from django.utils.dateparse import parse_datetime

        value = parse_datetime(value)
    if value is not None and value.tzinfo is None:
        from datetime import timezone

        value = value.replace(tzinfo=timezone.utc)
    return value
