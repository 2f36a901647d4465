"""The canonical text of a Decimal and the check of what can be stored exactly: remembered by value for
speed, so the answers must depend on the value alone, whatever its representation."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.common import fields
from billing.common.fields import check_decimal, decimal_to_text


@pytest.mark.parametrize(("first", "then", "text"), [
    ("1.50", "1.5", "1.5"), ("100", "1E+2", "100"), ("-0", "0", "0"), ("2.000000000000000000000", "2", "2"),
])
def test_equal_values_in_any_representation_have_one_text_and_one_verdict(first, then, text):
    fields._TEXTS.clear()
    fields._CHECKS.clear()

    assert decimal_to_text(Decimal(first)) == text and decimal_to_text(Decimal(then)) == text
    assert check_decimal(Decimal(first)) is None and check_decimal(Decimal(then)) is None


def test_what_cannot_be_stored_is_refused_the_first_time_and_every_time_after():
    for _ in range(2):
        assert check_decimal(Decimal("1e-19")) == "has more than 18 decimal places"
        assert check_decimal(Decimal("1e20")) == "has more than 20 digits before the decimal point"
        assert check_decimal(Decimal("NaN")) == "must be a finite number"
        assert check_decimal(Decimal("sNaN")) == "must be a finite number"
        assert check_decimal(Decimal("-Infinity")) == "must be a finite number"
        with pytest.raises(ValueError):
            decimal_to_text(Decimal("1e999999999"))


def test_the_memo_stays_bounded(monkeypatch):
    monkeypatch.setattr(fields, "_MEMO_SIZE", 10)
    fields._TEXTS.clear()
    fields._CHECKS.clear()

    texts = [decimal_to_text(Decimal(n) / 4) for n in range(25)]
    for n in range(25):
        check_decimal(Decimal(n))

    assert texts[:6] == ["0", "0.25", "0.5", "0.75", "1", "1.25"] and texts[24] == "6"

    assert len(fields._TEXTS) <= 10 and len(fields._CHECKS) <= 10
