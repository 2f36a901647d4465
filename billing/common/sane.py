"""What no input may carry into the database, checked before it gets there: PostgreSQL refuses a NUL
character in ``text`` and ``jsonb`` (a 500 instead of an answer), a lone UTF-16 surrogate cannot be
encoded as UTF-8, and near year 1 or 9999 a UTC offset overflows Python's datetime. Dates outside
[2000, 2100) are typos or probes in a billing system, so they are refused as such.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

INSTANT_MIN = datetime(2000, 1, 1, tzinfo=timezone.utc)
INSTANT_MAX = datetime(2100, 1, 1, tzinfo=timezone.utc)
MAX_JSON_DEPTH = 32  # far beyond any payload of the API (a plan's tiers are 4 deep)
NOT_UNICODE = "Must be valid Unicode (an unpaired surrogate)."


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None."""
    if "\x00" in value:
        return "Must not contain a NUL character."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return NOT_UNICODE
    return None


def instant_utc(value: datetime) -> datetime | None:
    """``value`` in UTC, or None when it is outside [INSTANT_MIN, INSTANT_MAX) (or has no offset)."""
    if value.tzinfo is None:
        return None
    try:
        utc = value.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before datetime.min
        return None
    return utc if INSTANT_MIN <= utc < INSTANT_MAX else None


INSTANT_RANGE = "Must be from 2000-01-01T00:00:00Z up to 2100-01-01T00:00:00Z."


def json_problem(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first string (key or value) in a parsed JSON document that cannot be stored, or nesting deeper
    than MAX_JSON_DEPTH: ``(path, message)``, else None. Iterative: a hostile depth cannot overflow."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return where or "non_field_errors", f"Nested more than {MAX_JSON_DEPTH} levels deep."
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return where or "non_field_errors", problem
        elif isinstance(item, dict):
            for key, child in item.items():
                name = f"{where}.{key}" if where else str(key)
                problem = text_problem(str(key))
                if problem:
                    return where or "non_field_errors", f"A key: {problem[0].lower()}{problem[1:]}"
                stack.append((child, name, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{index}]", depth + 1) for index, child in enumerate(item))
    return None
