"""Query-parameter parsing shared by the read APIs: RFC 3339 instants, enums, lists."""

from __future__ import annotations

from datetime import datetime

from django.utils.dateparse import parse_datetime

from billing.common.errors import validation_error
from billing.common.sane import INSTANT_RANGE, instant_utc


def parse_instant(name: str, value: str | None) -> datetime | None:
    if value in (None, ""):
        return None
    parsed = parse_datetime(value.replace(" ", "+"))  # a '+' in a query string arrives as a space
    if parsed is None or parsed.tzinfo is None:
        raise validation_error({name: ["Must be an RFC 3339 timestamp with a UTC offset."]})
    utc = instant_utc(parsed)
    if utc is None:
        raise validation_error({name: [INSTANT_RANGE]})
    return utc


def parse_choice(name: str, value: str | None, choices: tuple[str, ...], default: str) -> str:
    if value in (None, ""):
        return default
    if value not in choices:
        raise validation_error({name: [f"Must be one of {', '.join(choices)}."]})
    return value


def parse_int(name: str, value: str | None, default: int, low: int, high: int) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise validation_error({name: ["Must be an integer."]}) from None
    if not low <= number <= high:
        raise validation_error({name: [f"Must be between {low} and {high}."]})
    return number
