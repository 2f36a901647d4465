"""Named locks across processes, for rare paths that must not interleave (a contended limited batch, the
corrections of one event): a session advisory lock per name on PostgreSQL, held until released whatever the
transactions in between; a lock in this process otherwise (SQLite: one process serves; two names may share one)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterable, Iterator

from django.db import connection

_STRIPES = [threading.Lock() for _ in range(256)]  # in process: a fixed set, a name maps to one (bounded memory)


def _lock_id(name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock`` (a digest: distinct names practically never collide)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


@contextlib.contextmanager
def one_at_a_time(names: Iterable[str]) -> Iterator[None]:
    """Hold every lock of ``names`` (taken in one order: two holders never wait for each other)."""
    keys = sorted(set(names))
    if not keys:
        yield
        return
    if connection.vendor == "postgresql":
        ids = sorted({_lock_id(name) for name in keys})
        with connection.cursor() as cursor:
            for lock_id in ids:
                cursor.execute("SELECT pg_advisory_lock(%s)", [lock_id])
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                for lock_id in reversed(ids):
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [lock_id])
        return
    with contextlib.ExitStack() as stack:
        for stripe in sorted({_lock_id(name) % len(_STRIPES) for name in keys}):
            stack.enter_context(_STRIPES[stripe])
        yield
