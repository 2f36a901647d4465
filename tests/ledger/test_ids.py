"""Ledger ids are the idempotency keys: however they are computed, the same key gives the same id."""

from __future__ import annotations

import pytest

from ledger.ids import derive, deriver, namespace, use_namespace


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
    # a retry after an upgrade must land on the same transfer: these values may never change (an installation
    # older than namespaces keeps the empty one)
    with use_namespace(""):
        assert derive("usage-quota", 5, "evt-1") == 0x4CE9ADEEFC388C5FD89DCF9A7C2E80EE


def test_namespaces_never_share_an_id() -> None:
    with use_namespace("aaaa"):
        first = (derive("usage-quota", 5, "evt-1"), deriver("usage-quota", 5)("evt-1"))
    with use_namespace("bbbb"):
        second = (derive("usage-quota", 5, "evt-1"), deriver("usage-quota", 5)("evt-1"))
    assert first[0] == first[1] and second[0] == second[1]
    assert first[0] != second[0]


@pytest.mark.django_db
def test_the_installation_namespace_is_stored_and_random(settings: object) -> None:
    from ledger import ids
    from ledger.models import Installation

    stored = Installation.objects.get()
    assert len(stored.namespace) == 16  # a fresh database: a random namespace (none held usage before)
    with use_namespace("ignored"):
        ids.forget_namespace()
        assert namespace() == stored.namespace  # read from the database when not set
        settings.TOLLGATE_LEDGER_NAMESPACE = "restored"  # type: ignore[attr-defined]
        ids.forget_namespace()
        assert namespace() == "restored"
