"""An invoice's prepaid credits are one account's balance (the period's credits-consumed account), not a
scan of the wallet's transfers (docs/ledger.md)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billing.common.calendar import period_bounds
from billing.guardrails import accounts as acc
from billing.invoicing.compute import credits_consumed
from billing.usage.services import events_ingest
from ledger.backends import get_ledger
from tests.billing.guardrails.test_limits_at_ingest import ADMIN, AT, body, catalog, subscribe

pytestmark = [pytest.mark.ledger, pytest.mark.django_db]


def test_credits_consumed_is_one_account_lookup_net_of_nothing_else(acme: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # given prepaid credits and usage in several batches (per unit at 0.01)
    from billing.guardrails.services import credits_grant

    subscribe(acme, catalog())
    credits_grant(customer=acme, amount=Decimal("50"), currency="USD", idempotency_key="k")
    for n in range(3):
        events_ingest(principal=ADMIN, raw_events=[body(f"e{n}-{i}", "10") for i in range(5)])
    calls: list[str] = []
    backend = type(get_ledger())
    real_lookup = backend.lookup_accounts

    def lookup(self: Any, ids: Any) -> Any:
        calls.append("lookup_accounts")
        return real_lookup(self, ids)

    def transfers(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("credits are read from the account's balance")

    monkeypatch.setattr(backend, "lookup_accounts", lookup)
    monkeypatch.setattr(backend, "account_transfers", transfers)

    # when the period's consumed credits are read, then they are the usage's cost, in one lookup
    start, _end = period_bounds(AT)
    assert credits_consumed(customer=acme, currency="USD", start=start) == acc.money_units_ceil(Decimal("1.5"))
    assert calls == ["lookup_accounts"]
    # and a currency or period without usage consumed nothing
    assert credits_consumed(customer=acme, currency="EUR", start=start) == 0
