"""Named locks across processes, for rare paths that must not interleave (a contended limited batch, the
corrections of one event): a session advisory lock per name on PostgreSQL, held until released whatever the
transactions in between; a lock per name in this process otherwise (SQLite: one process serves)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterable, Iterator

from django.db import connection

_local: dict[str, threading.Lock] = {}
_guard = threading.Lock()


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
    with _guard:
        locks = [_local.setdefault(name, threading.Lock()) for name in keys]
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield
