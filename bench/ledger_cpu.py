"""What limits on the SQL ledger cost per event, as CPU: ``events_ingest`` in process on the database named by
DATABASE_URL (no HTTP, no server), ``bench-ledger``'s batches (1,000 events, 10% identical re-sends, one
customer per phase) for plain customers (no plan) and limited ones (``bench-ledger``'s plan: a graduated
price, a hard limit, a spend cap), alternated round after round, fresh customers every round.

Measured per phase: this thread's CPU (the app) and the CPU of this connection's PostgreSQL backend (from
/proc: run it on the database's host), per 1,000 events; the first batch of each phase (a new customer's
accounts) is not counted. CPU per event hardly moves with the machine's load, so this compares two trees
on a shared machine where ``bench-ledger``'s rates cannot. To mirror ``bench-ledger``'s server, use a
freshly migrated database on a server without autovacuum (no table is ever analyzed):

    DATABASE_URL=postgres://... python bench/ledger_cpu.py --rounds 6 --batches 10
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a local process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def setup(tag: str, rounds: int) -> None:
    """The meter and plan of bench-ledger (once per database), and one plain and one limited customer per round."""
    from ingest import LIMITED_PLAN

    from billing.catalog.models import Meter, Plan
    from billing.catalog.services import catalog_import, meter_create, subscription_set
    from billing.customers.services import customer_create

    if not Meter.objects.filter(key="llm_tokens").exists():
        meter_create(key="llm_tokens", name="LLM tokens", aggregation="sum")
    if not Plan.objects.filter(key="limited").exists():
        catalog_import(text=LIMITED_PLAN, actor="bench")
    plan = Plan.objects.get(key="limited")
    start = datetime(2020, 1, 1, tzinfo=timezone.utc)
    for r in range(rounds):
        customer_create(external_id=f"cpu-{tag}-plain-{r}", name="plain")
        limited = customer_create(external_id=f"cpu-{tag}-limited-{r}", name="limited")
        subscription_set(customer=limited, plan=plan, start=start, now=datetime.now(timezone.utc), actor="bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches", type=int, default=10, help="counted batches of 1,000 per kind and round")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ["LEDGER_BACKEND"] = "sql"
    os.environ["TOLLGATE_RATE_LIMIT_PER_SECOND"] = "0"
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import django

    django.setup()
    import msgspec
    from _http import batches
    from django.db import connection

    from billing.common.auth import Principal
    from billing.usage.ingest import events_ingest

    tag = uuid.uuid4().hex[:6]
    setup(tag, args.rounds)
    principal = Principal(scopes=frozenset({"ingest"}))
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    gc.freeze()  # as portal.wsgi
    per_phase: dict[str, list[tuple[float, float]]] = {"plain": [], "limited": []}
    decode = msgspec.json.Decoder(dict[str, list[msgspec.Raw]])
    for r in range(args.rounds):
        for kind in ("plain", "limited") if r % 2 == 0 else ("limited", "plain"):
            bodies = [decode.decode(body)["events"]
                      for body in batches(f"cpu-{tag}-{kind}-{r}", (args.batches + 1) * 1000, 1000, 0, 1)]
            events_ingest(principal=principal, raw_events=bodies[0])  # the customer's accounts: not counted
            app, pg = time.thread_time(), backend_cpu(backend)
            for raw in bodies[1:]:
                events_ingest(principal=principal, raw_events=raw)
            per_phase[kind].append(((time.thread_time() - app) * 1000 / args.batches,
                                    (backend_cpu(backend) - pg) * 1000 / args.batches))
    summary: dict[str, object] = {}
    for kind, phases in per_phase.items():
        summary[kind] = {"app_cpu_ms_per_1000": round(statistics.median(a for a, _ in phases), 2),
                         "pg_cpu_ms_per_1000": round(statistics.median(p for _, p in phases), 2),
                         "total_per_round": [round(a + p, 1) for a, p in phases]}
    plain = statistics.median(a + p for a, p in per_phase["plain"])
    limited = statistics.median(a + p for a, p in per_phase["limited"])
    summary["limited_cpu_over_plain"] = round(limited / plain - 1, 3)
    summary["rate_overhead_if_cpu_bound"] = round(1 - plain / limited, 3)
    summary["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
