"""Ledger ids are the idempotency keys: however they are computed, the same key gives the same id."""

from __future__ import annotations

import pytest

from ledger.ids import derive, deriver


@pytest.mark.parametrize(("kind", "parts", "rest"), [
    ("usage-quota", (5,), ("evt-1",)),
    ("usage-counter", (5,), ("evt-1", 0)),
    ("usage-counter", (5,), ("evt-1", 1)),
    ("usage-spend", (123456,), ("é\x1fwith a separator",)),
    ("grant", (), ("key",)),
])
def test_deriver_gives_the_ids_derive_gives(kind: str, parts: tuple, rest: tuple) -> None:
    assert deriver(kind, *parts)(*rest) == derive(kind, *parts, *rest)


def test_derived_ids_are_fixed_for_ever() -> None:
    # a retry after an upgrade must land on the same transfer: these values may never change
    assert derive("usage-quota", 5, "evt-1") == 0x4CE9ADEEFC388C5FD89DCF9A7C2E80EE
