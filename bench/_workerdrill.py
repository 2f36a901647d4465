"""The worker drill of ``make drills`` (bench/_appdrills.py): the Celery worker SIGKILLed in the middle of a
rollup, then in the middle of a period's finalization, on the stack of bench/_stack.py.

Last month's events of ``INVOICE_CUSTOMERS`` customers are loaded with one ``COPY`` (received long ago, so
the rollup takes them at once), the rollup task is queued, and the worker is SIGKILLed (its pool too) while
the rollup's transaction is open; a new worker is started and the task, never acknowledged (``acks_late``),
comes back after the broker's visibility timeout. The rollups must then equal a recomputation from the raw
events (``rollup_check``). Then ``close_periods`` is queued and the worker is SIGKILLed once some, not all,
of last month's invoices are final; after the restart every customer must have exactly one finalized
invoice for the period, numbers without gaps or repeats, each equal to a recomputation from the raw events
(``manage.py invoice verify --all``)."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timedelta
from typing import Any

from _http import PY, ROOT
from _stack import VISIBILITY, Stack

EVENTS_PER_CUSTOMER = 1000  # 100,000 events: two rollup transactions (50,000 a step), each about a second or more in SQL
COLUMNS = ("customer_id, meter_id, event_id, quantity, timestamp, usage_at, received_at, dimensions, run_id, billable, "
           "reason, schema_version, corrects, fingerprint")
MODELS = ('{"model": "a"}', '{"model": "b"}', '{"model": "c"}')
IN_TRANSACTION = """SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
AND state IN ('active', 'idle in transaction') AND xact_start < now() - interval '0.3 seconds'"""
FINALIZED = """SELECT count(*) FROM invoicing_invoice WHERE kind = 'invoice' AND status <> 'draft' AND period_start = %s"""


def _load(stack: Stack) -> int:
    """Last month's events of the billed customers, spread over its hours; returns how many."""
    import psycopg

    start = datetime.fromisoformat(stack.info["last_month"])
    span = datetime.fromisoformat(stack.info["this_month"]) - start
    meter, lines = stack.info["meter"], []
    for c, customer in enumerate(stack.info["billed"]):
        for n in range(EVENTS_PER_CUSTOMER):
            at = start + span * ((n * 7919 + c) % EVENTS_PER_CUSTOMER) / EVENTS_PER_CUSTOMER
            stamp = at.isoformat()
            lines.append(f"{customer}\t{meter}\tw-{n}\t{1 + (n * 31 + c) % 997}\t{stamp}\t{stamp}\t"
                         f"{(at + timedelta(minutes=1)).isoformat()}\t{MODELS[n % 3]}\t\tt\t\t1\t\t{c:016x}{n:016x}\n")
    with psycopg.connect(stack.database_url) as conn, conn.cursor() as cur, \
            cur.copy(f"COPY usage_event ({COLUMNS}) FROM STDIN") as copy:
        copy.write("".join(lines))
    return len(lines)


def _kill_when(stack: Stack, ready: Any, timeout: float = 120) -> float:
    """SIGKILL the worker as soon as ``ready()``; returns the monotonic time of the kill."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError("the drill never caught the task running")
        time.sleep(0.05)
    at = time.monotonic()
    stack.kill_worker()
    return at


def _wait(done: Any, timeout: float) -> float | None:
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            return None
        time.sleep(0.25)
    return time.monotonic() - start


def rollup_kill(stack: Stack) -> dict[str, Any]:
    loaded = _load(stack)
    billed = stack.info["billed"]
    top = stack.sql("SELECT max(id) FROM usage_event")
    watermark = "SELECT coalesce(max(last_event_id), 0) FROM usage_rollupwatermark WHERE name = 'hourly'"
    stack.queue("usage.rollup")
    killed = _kill_when(stack, lambda: stack.sql(IN_TRANSACTION) > 0 and "usage.rollup[" in stack.worker_log())
    at_kill = stack.sql(watermark)
    stack.start_worker()
    recovered = _wait(lambda: stack.sql(watermark) >= top, VISIBILITY + 180)
    recovery = None if recovered is None else round(time.monotonic() - killed, 1)
    drift = json.loads(stack.shell("import json\nfrom billing.usage.rollups import rollup_check\n"
                                   "print(json.dumps(rollup_check()))").strip().splitlines()[-1])
    rolled = int(stack.sql("SELECT coalesce(sum(events), 0) FROM usage_hourly_rollup WHERE customer_id = ANY(%s)", (billed,)))
    daily = int(stack.sql("SELECT coalesce(sum(events), 0) FROM usage_daily_rollup WHERE customer_id = ANY(%s)", (billed,)))
    problems = []
    if at_kill >= top:
        problems.append("the rollup had finished before the kill: nothing was interrupted")
    if recovered is None:
        problems.append(f"the rollup did not complete within {VISIBILITY + 180} s of the worker's restart")
    if drift or rolled != loaded or daily != loaded:
        problems.append(f"rollups differ from the raw events: {len(drift)} drift lines {drift[:3]}, hourly {rolled}, "
                        f"daily {daily} of {loaded} events")
    return {"key": "worker-rollup", "drill": "worker SIGKILLed mid-rollup", "unit": "events rolled up", "sent": loaded,
            "stored": rolled,
            "lost": max(0, loaded - rolled), "double_counted": max(0, rolled - loaded) + max(0, daily - loaded),
            "5xx": None, "503_retried": None, "recovery_s": recovery, "drift_lines": len(drift),
            "watermark_at_kill_of": f"{at_kill} of {top}", "problems": problems}


def finalize_kill(stack: Stack) -> dict[str, Any]:
    period = datetime.fromisoformat(stack.info["last_month"])
    expected = len(stack.info["billed"])
    stack.queue("invoicing.close_periods")
    killed = _kill_when(stack, lambda: stack.sql(FINALIZED, (period,)) > 0)
    at_kill = stack.sql(FINALIZED, (period,))
    stack.start_worker()
    recovered = _wait(lambda: stack.sql(FINALIZED, (period,)) >= expected, VISIBILITY + 180)
    recovery = None if recovered is None else round(time.monotonic() - killed, 1)
    finalized = stack.sql(FINALIZED, (period,))
    per_customer = stack.sql("SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM invoicing_invoice WHERE "
                             "kind = 'invoice' AND period_start = %s GROUP BY customer_id) AS counts", (period,))
    numbers = stack.sql("SELECT json_build_array(count(*), count(DISTINCT number), "
                        "max(substring(number from '[0-9]+$')::int) - min(substring(number from '[0-9]+$')::int) + 1) "
                        "FROM invoicing_invoice WHERE kind = 'invoice' AND number <> ''")
    verify = subprocess.run([PY, "manage.py", "invoice", "verify", "--all"], cwd=ROOT, env=stack.env, capture_output=True,
                            text=True, check=False)
    mismatches = verify.stdout.count("MISMATCH")
    problems = []
    if at_kill >= expected:
        problems.append("the period was finalized before the kill: nothing was interrupted")
    if recovered is None:
        problems.append(f"finalization did not complete within {VISIBILITY + 180} s of the worker's restart")
    if per_customer != 1 or finalized != expected or numbers[0] != numbers[1] or numbers[0] != numbers[2]:
        problems.append(f"invoices: {finalized} finalized of {expected}, up to {per_customer} per customer, numbers "
                        f"(count, distinct, span) {numbers}")
    if verify.returncode or mismatches:
        problems.append(f"invoice verify --all: {verify.stdout[-600:]} {verify.stderr[-600:]}")
    return {"key": "worker-finalize", "drill": "worker SIGKILLed mid-finalization", "unit": "invoices", "sent": expected,
            "stored": finalized,
            "lost": max(0, expected - finalized), "double_counted": max(0, per_customer - 1) + mismatches
            + (numbers[0] - numbers[1]), "5xx": None, "503_retried": None, "recovery_s": recovery,
            "finalized_at_kill": at_kill, "problems": problems}
