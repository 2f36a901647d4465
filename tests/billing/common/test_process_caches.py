from typing import Any

from billing.common import process_caches


def test_every_process_cache_is_registered_and_cleared_by_clear_all() -> None:
    from billing.guardrails import accounts, alerts
    from billing.guardrails.limits import plans
    from billing.invoicing import periods
    from billing.usage import selectors
    from billing.usage.ingest import resolve

    containers: list[Any] = [resolve.METERS, accounts.KNOWN_ACCOUNTS, accounts.KNOWN_ALLOCATIONS, accounts.KNOWN_WALLETS,
                  plans._SHARED, selectors._DIMENSIONS, alerts._QUEUED]
    for index, cache in enumerate(containers):
        if isinstance(cache, set):
            cache.add(index)
        else:
            cache[index] = index
    periods._cache = (0.0, periods.EPOCH)

    process_caches.clear_all()

    assert all(not cache for cache in containers)
    assert periods._cache is None
    assert "billing.guardrails.accounts._operator_account" in process_caches.registered()
