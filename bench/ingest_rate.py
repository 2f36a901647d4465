"""Ingest's store path alone, in process: ``events_ingest`` batches of 1,000 new events straight into the
database named by DATABASE_URL (no HTTP, no server), plain customers (no plan) and limited ones (a plan with a
hard limit and a spend cap, booked on the SQL ledger in the insert's statement), alternated round after round.

A quick before/after check for a change to the event table or its insert on one's own PostgreSQL (the full
HTTP figures are ``make bench-ingest``'s). Prints events per second per kind: the median of the rounds.

    DATABASE_URL=postgres://... python bench/ingest_rate.py --rounds 7 --batches 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UTC = timezone.utc

CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
plans:
  - key: limited
    name: Limited
    currency: USD
    effective_from: "2020-01-01T00:00:00Z"
    charges:
      - meter: llm_tokens
        model: graduated
        tiers: [{up_to: 1000000, unit_price: "0.000002"}, {up_to: null, unit_price: "0.000001"}]
    limits:
      - {meter: llm_tokens, soft: "80%", hard: 1000000000000000}
    spend_cap: "1000000000"
"""


def setup(tag: str) -> tuple[list[str], list[str]]:
    """The catalog (once) and ten customers of each kind for this run."""
    from billing.catalog.models import Meter, Plan
    from billing.catalog.services import catalog_import, subscription_set
    from billing.customers.services import customer_create

    if not Meter.objects.filter(key="llm_tokens").exists():
        catalog_import(text=CATALOG, actor="bench")
    plan = Plan.objects.get(key="limited")
    start = datetime(2020, 1, 1, tzinfo=UTC)
    plain = [customer_create(external_id=f"rate-{tag}-p{n}", name="plain").external_id for n in range(10)]
    limited = []
    for n in range(10):
        customer = customer_create(external_id=f"rate-{tag}-l{n}", name="limited")
        subscription_set(customer=customer, plan=plan, start=start, now=start, actor="bench")
        limited.append(customer.external_id)
    return plain, limited


def batch(customers: list[str], now: datetime) -> list[bytes]:
    return [json.dumps({"event_id": uuid.uuid4().hex, "customer": customers[n % len(customers)], "meter": "llm_tokens",
                        "quantity": str(1 + n % 997), "timestamp": (now - timedelta(seconds=n)).isoformat(),
                        "dimensions": {"model": "gpt-4o", "direction": "input"}}).encode() for n in range(1000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=10, help="batches of 1,000 per kind and round")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ["LEDGER_BACKEND"] = "sql"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from billing.common.auth import Principal
    from billing.usage.ingest import events_ingest

    admin = Principal(scopes=frozenset({"admin"}))
    plain, limited = setup(uuid.uuid4().hex[:6])
    rates: dict[str, list[float]] = {"plain": [], "limited": []}
    wal_start = wal_lsn()
    for _ in range(args.rounds):
        for kind, customers in (("plain", plain), ("limited", limited)):
            batches = [batch(customers, datetime.now(UTC)) for _ in range(args.batches)]
            start = time.perf_counter()
            for raw in batches:
                results = events_ingest(principal=admin, raw_events=raw)
                if any(r.status != "accepted" for r in results):
                    raise SystemExit(f"not accepted: {[r.as_dict() for r in results if r.status != 'accepted'][:3]}")
            rates[kind].append(args.batches * 1000 / (time.perf_counter() - start))
    wal = wal_lsn() - wal_start if wal_start is not None else None
    summary: dict[str, Any] = {kind: {"median_events_per_s": round(statistics.median(r)), "rounds": [round(x) for x in r]}
                               for kind, r in rates.items()}
    summary["load_average"] = [round(v, 2) for v in os.getloadavg()]
    summary["wal_bytes_per_event"] = wal and round(wal / (2000 * args.rounds * args.batches))
    print(json.dumps(summary))


def wal_lsn() -> Any:
    """PostgreSQL's WAL position in bytes (None elsewhere): the WAL each event costs, for replicas and disks."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        return int(cursor.fetchone()[0])


if __name__ == "__main__":
    main()
