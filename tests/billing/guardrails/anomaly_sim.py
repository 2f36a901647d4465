"""A customer's traffic and the anomaly sampler on a clock the test controls (not a fixture module)."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from billing.guardrails.anomalies.detection import anomalies_sample
from billing.guardrails.models import Anomaly
from tests import factories

UTC = timezone.utc
PRICE = Decimal("0.01")  # per token


def anomaly_catalog(*, window_minutes: int = 5, factor: str = "5", min_spend: str = "1", action: str = "pause") -> str:
    charge = {"meter": "llm_tokens", "model": "per_unit", "unit_price": str(PRICE)}
    return factories.catalog(factories.plan("watched", [charge], anomaly={
        "window_minutes": window_minutes, "factor": factor, "min_spend": min_spend, "action": action}))


def watch(customer: Any, **terms: Any) -> None:
    factories.subscribe(customer, "watched", start=datetime(2026, 1, 1, tzinfo=UTC), catalog_text=anomaly_catalog(**terms))


class Sim:
    """Events whose cost is a chosen spend, and sampler ticks, in time order on a simulated clock."""

    def __init__(self, customer: str = "acme-co", seed: int = 7) -> None:
        self.customer = customer
        self.n = 0
        self.rng = random.Random(seed)
        self.opened: list[Anomaly] = []
        self.refused = 0

    def spend(self, at: datetime, amount: Decimal, **extra: Any) -> None:
        """One event at ``at`` costing ``amount`` (tokens at PRICE), ingested at ``at`` + 1 s."""
        if amount <= 0:
            return
        self.n += 1
        tokens = (amount / PRICE).quantize(Decimal("1"))
        results = factories.ingest(factories.event(f"{self.customer}-{self.n}", at, str(tokens), customer=self.customer,
                                                   **extra), now=at + timedelta(seconds=1))
        self.refused += sum(r["status"] != "accepted" for r in results)

    def tick(self, at: datetime) -> list[Anomaly]:
        opened = anomalies_sample(now=at)
        self.opened += opened
        return opened

    def run(self, start: datetime, end: datetime, rate: Callable[[datetime], Decimal], every: int = 15,
            jitter: float = 0.0, **extra: Any) -> None:
        """From ``start`` to ``end``: every ``every`` seconds, the spend of that slot at ``rate`` (per minute,
        times 1 +/- ``jitter``) as one event, then a tick 5 s later."""
        at = start
        while at < end:
            amount = rate(at) * Decimal(every) / 60
            if jitter:
                amount *= Decimal(str(round(1 + self.rng.uniform(-jitter, jitter), 3)))
            self.spend(at, amount, **extra)
            self.tick(at + timedelta(seconds=5))
            at += timedelta(seconds=every)


def steady(per_minute: str) -> Callable[[datetime], Decimal]:
    value = Decimal(per_minute)
    return lambda at: value
