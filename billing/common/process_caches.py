"""The process's own caches, in one register. Each cache lives in the module that fills it and is
registered there when the module is imported (``register``); ``clear_all`` empties every one of them.
Production never needs to: what they keep is never edited or deleted. Tests, whose database is rolled
back and whose ids repeat, call ``clear_all`` before each test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar


class Clearable(Protocol):
    def clear(self) -> None: ...


C = TypeVar("C", bound=Clearable)

_CLEARERS: dict[str, Callable[[], None]] = {}


def register(name: str, cache: C) -> C:
    """Register ``cache`` (anything with ``clear()``) under ``name``, its owner's dotted name; returns it."""
    register_clearer(name, cache.clear)
    return cache


def register_clearer(name: str, clear: Callable[[], None]) -> None:
    """Register a function that empties a cache that is not a container (a cached value, an lru_cache)."""
    _CLEARERS[name] = clear


def registered() -> list[str]:
    return sorted(_CLEARERS)


def clear_all() -> None:
    for clear in _CLEARERS.values():
        clear()
