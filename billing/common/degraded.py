"""Fail soft around what Tollgate can run without for a while: the cache (Redis) and the broker. A call that
fails is counted (``COUNTS``, per kind, for the process) and logged as a warning at most once every
``LOG_EVERY_SECONDS`` per kind, so an outage of minutes writes a few lines, not one per request; the caller
gets a default and goes on (docs/operations.md, "When Redis or PostgreSQL is down")."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("tollgate.degraded")
LOG_EVERY_SECONDS = 10.0
COUNTS: Counter[str] = Counter()
_last_logged: dict[str, float] = {}
_lock = threading.Lock()
T = TypeVar("T")


def degraded(kind: str, error: BaseException) -> None:
    """Record one failure of ``kind`` (``rate_limit_cache``, ``alerts_cache``, ``broker``...)."""
    now = time.monotonic()
    with _lock:
        COUNTS[kind] += 1
        due = now - _last_logged.get(kind, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS
        if due:
            _last_logged[kind] = now
        count = COUNTS[kind]
    if due:
        log.warning("%s unavailable, failing open (%d failures so far in this process): %s: %s",
                    kind, count, type(error).__name__, error)


def soft(kind: str, call: Callable[..., T], *args: Any, default: T, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, or ``default`` (recorded by ``degraded``) when it raises."""
    try:
        return call(*args, **kwargs)
    except Exception as error:
        degraded(kind, error)
        return default
