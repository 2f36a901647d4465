"""AsyncTollgate mirrors Tollgate: the same delivery guarantees from an asyncio task, and reserve as an
``async with``."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sdk_fakes import FaultProxy, Server, stored_ids
from tollgate_client import AsyncTollgate, EventError, LimitExceeded

FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_max": 0.2, "flush_interval": 0.05}


def test_async_track_retries_faults_with_the_same_ids_and_stores_once(server: Server, proxy: FaultProxy) -> None:
    proxy.faults = ["503", "reset", "lose_reply"]
    errors: list[EventError] = []

    async def main() -> list[str]:
        async with AsyncTollgate(base_url=proxy.url, api_key=server.ingest_key, on_error=errors.append, batch_size=10,
                                 **FAST) as tg:
            ids = [await tg.track(customer="acme-co", meter="llm_tokens", quantity=i) for i in range(25)]
            bad = await tg.track(customer="acme-co", meter="nope", quantity=1)
            assert await tg.flush(timeout=20)
            assert tg.pending() == 0 and tg.stats.delivered == 25 and tg.stats.failed == 1
            assert [e.event_id for e in errors] == [bad]
            return ids

    ids = asyncio.run(main())
    assert sorted(stored_ids()) == sorted(ids)
    sent = proxy.sent_ids()
    assert sent[0] == sent[1] == sent[2] == sent[3] == ids[:10]  # the first batch, four times, the same ids


def test_async_spool_survives_the_client_and_drop_counts(server: Server, proxy: FaultProxy, tmp_path: Path) -> None:
    spool = str(tmp_path / "a.sqlite3")

    async def outage() -> list[str]:
        proxy.down = True
        tg = AsyncTollgate(base_url=proxy.url, api_key=server.ingest_key, spool_path=spool, **FAST)
        ids = [await tg.track(customer="acme-co", meter="llm_tokens", quantity=1) for _ in range(20)]
        await tg.close(timeout=0.3)
        assert tg.stats.lost == 0
        dropping = AsyncTollgate(base_url=proxy.url, api_key=server.ingest_key, max_queue=2, overflow="drop",
                                 **{**FAST, "flush_interval": 30})
        for _ in range(4):
            await dropping.track(customer="acme-co", meter="llm_tokens", quantity=1)
        assert dropping.stats.dropped == 2
        await dropping.close(timeout=0.1)
        blocking = AsyncTollgate(base_url=proxy.url, api_key=server.ingest_key, max_queue=1, block_timeout=0.2,
                                 **{**FAST, "flush_interval": 30})
        await blocking.track(customer="acme-co", meter="llm_tokens", quantity=1)
        started = time.monotonic()
        await blocking.track(customer="acme-co", meter="llm_tokens", quantity=1)  # waits for room, then drops
        assert time.monotonic() - started >= 0.2 and blocking.stats.dropped == 1
        await blocking.close(timeout=0.1)
        assert blocking.stats.lost == 1
        return ids

    async def drain() -> None:
        proxy.down = False
        async with AsyncTollgate(base_url=proxy.url, api_key=server.ingest_key, spool_path=spool, **FAST) as tg:
            assert tg.pending() == 20
            assert await tg.flush(timeout=20)

    ids = asyncio.run(outage())
    assert stored_ids() == []
    asyncio.run(drain())
    assert sorted(stored_ids()) == sorted(ids)


def test_async_reserve_settles_releases_and_raises_limit_exceeded(server: Server, proxy: FaultProxy, hard_limit: Any) -> None:
    hard_limit("1000")

    async def main() -> None:
        async with AsyncTollgate(base_url=proxy.url, api_key=server.admin_key, **FAST) as tg:
            async with tg.reserve(customer="acme-co", meter="llm_tokens", quantity=600) as r:
                held = (await tg.balance("acme-co"))["quotas"][0]
                assert Decimal(held["reserved"]) == 600
                await r.settle(quantity=250, dimensions={"model": "m"})
            with pytest.raises(RuntimeError):
                async with tg.reserve(customer="acme-co", meter="llm_tokens", quantity=600) as r2:
                    raise RuntimeError("the work failed")
            assert r2.state == "released"
            r3 = await tg.reserve(customer="acme-co", meter="llm_tokens", quantity=100)
            await r3.release()
            with pytest.raises(LimitExceeded) as caught:
                await tg.reserve(customer="acme-co", meter="llm_tokens", quantity=751)
            assert caught.value.code == "quota_exceeded"
            quota = (await tg.balance("acme-co"))["quotas"][0]
            assert Decimal(quota["used"]) == 250 and Decimal(quota["reserved"]) == 0
            rows = (await tg.usage("acme-co", meter="llm_tokens", granularity="month"))["data"]
            assert [r["quantity"] for r in rows] == ["250"]

    asyncio.run(main())
