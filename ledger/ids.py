"""Deterministic ids: the same stable key always gives the same 128-bit id, so every retry of a
write is exactly-once in the ledger (TigerBeetle's idempotency is by id).

Every key carries the installation's namespace (``namespace()``): two installations sharing one
TigerBeetle cluster (a staging and a production, a recreated database) never share an account or a
transfer. The namespace is stored with the database (``ledger.models.Installation``); the empty
namespace is the one installations made before it existed keep, so their ids never change."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator

_namespace: str | None = None  # loaded once per process (ledger.models.Installation), or set by use_namespace
_lock = threading.Lock()


def namespace() -> str:
    """The installation's id namespace ('' for an installation older than namespaces)."""
    found = _namespace
    if found is None:
        with _lock:
            if _namespace is None:
                from ledger.models import Installation

                _set(Installation.current_namespace())
            found = _namespace
    assert found is not None
    return found


def _set(value: str | None) -> None:
    global _namespace
    _namespace = value


@contextlib.contextmanager
def use_namespace(value: str) -> Iterator[None]:
    """Derive ids in ``value`` inside the block (tests: each test its own, on one shared TigerBeetle)."""
    before = _namespace
    _set(value)
    try:
        yield
    finally:
        _set(before)


def forget_namespace() -> None:
    """Read the namespace from the database again at the next id (after it was changed there)."""
    _set(None)


def _key_head(kind: str) -> list[str]:
    ns = namespace()
    return ["tollgate", kind] if not ns else ["tollgate", f"ns={ns}", kind]


def derive(kind: str, *parts: object) -> int:
    """A non-zero 127-bit id from a kind and stable parts (never 0, never u128 max)."""
    key = "\x1f".join([*_key_head(kind), *map(str, parts)]).encode()
    value = int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "big") >> 1
    return value or 1


def deriver(kind: str, *parts: object) -> Callable[..., int]:
    """``derive(kind, *parts, *rest)`` for many ``rest`` (at least one part) sharing the leading parts:
    the same ids, with the common prefix of the key joined once (ingest derives three per event)."""
    prefix = "\x1f".join([*_key_head(kind), *map(str, parts)]) + "\x1f"
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
