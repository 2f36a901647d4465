"""Deterministic ids: the same stable key always gives the same 128-bit id, so every retry of a
write is exactly-once in the ledger (TigerBeetle's idempotency is by id)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable


def derive(kind: str, *parts: object) -> int:
    """A non-zero 127-bit id from a kind and stable parts (never 0, never u128 max)."""
    key = "\x1f".join(["tollgate", kind, *map(str, parts)]).encode()
    value = int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "big") >> 1
    return value or 1


def deriver(kind: str, *parts: object) -> Callable[..., int]:
    """``derive(kind, *parts, *rest)`` for many ``rest`` (at least one part) sharing the leading parts:
    the same ids, with the common prefix of the key joined once (ingest derives three per event)."""
    prefix = "\x1f".join(["tollgate", kind, *map(str, parts)]) + "\x1f"
    blake2b, from_bytes = hashlib.blake2b, int.from_bytes

    def derive_rest(*rest: object) -> int:
        if not rest:
            raise TypeError("deriver(...)() needs at least one part")
        key = (prefix + "\x1f".join(map(str, rest))).encode()
        return from_bytes(blake2b(key, digest_size=16).digest(), "big") >> 1 or 1

    return derive_rest


def period_code(year: int, month: int) -> int:
    """user_data_32 for a period: 202611."""
    return year * 100 + month
