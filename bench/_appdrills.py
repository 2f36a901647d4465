"""The application drills of ``make drills``, on the stack of bench/_stack.py (gunicorn, a Celery worker and
beat on PostgreSQL and Redis of the drill's own, the SQL ledger). Each returns one row of the drills' table:
what was sent, what is stored, lost, double-counted, 5xx answers (other than ``503`` with ``Retry-After``,
which a client retries) and the recovery time, with its problems (any makes the command fail).

- ``web-kill``: gunicorn workers SIGKILLed during ingest; retrying clients (bench/_drill.py ``Client``).
- ``redis``: Redis stopped for 20 s during ingest while the worker holds a delayed ``acks_late`` alert check.
- ``postgres``: PostgreSQL stopped (fast) and started again 5 s later during ingest, a one-off task queued meanwhile.
- ``worker``: the worker SIGKILLed mid-rollup, then mid-finalization; the results compared with a recompute.
- ``credit``: 100 concurrent debits on one credit grant that covers 50 of them.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from _drill import METER, VERIFY, Answer, Client, Record
from _stack import CREDIT, VISIBILITY, Stack, children_of, log_time


def _row(drill: str, unit: str, **figures: Any) -> dict[str, Any]:
    row = {"drill": drill, "unit": unit, "sent": 0, "stored": 0, "lost": 0, "double_counted": 0, "5xx": 0,
           "503_retried": 0, "recovery_s": None, "problems": []}
    row.update(figures)
    return row


def _first_acceptance_after(record: Record, since: float, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with record.lock:
            done = [a.at for a in record.answers if a.at >= since and a.status == 200 and a.accepted]
        if done:
            return min(done) - since
        time.sleep(0.1)
    return None


def _ingest(stack: Stack, args: Any, customer: str, fault: Callable[[Record], dict[str, Any]]) -> tuple[Record, dict[str, Any]]:
    """``--clients`` retrying clients for ``customer`` through ``fault(record)``, then until their last batch is
    answered."""
    record, stop, never = Record(), threading.Event(), threading.Event()
    deadline = time.monotonic() + 600
    clients = [Client(n, stack.port, stack.info["ingest"], record, args.batch, stop, never, deadline, customer=customer)
               for n in range(args.clients)]
    for client in clients:
        client.start()
    try:
        outcome = fault(record)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=120)
    errors = [c.error for c in clients if c.error] + [f"{c.name} still running" for c in clients if c.is_alive()]
    if errors:
        outcome.setdefault("problems", []).append(f"clients failed: {errors}")
    return record, outcome


def _ingest_row(stack: Stack, drill: str, customer: str, record: Record, outcome: dict[str, Any],
                drops_allowed: bool) -> dict[str, Any]:
    out = stack.work / f"stored-{customer}.json"
    stack.shell(VERIFY % {"customer": customer, "meter": METER, "out": str(out)})
    row = ingest_verdict(drill, record, outcome, json.loads(out.read_text()), drops_allowed=drops_allowed)
    if row["5xx"]:  # the server's side of each 500, so that a rare one is diagnosed from the run's own output
        row["server_errors"] = server_errors((stack.work / "gunicorn.log").read_text(errors="replace"))
    return row


def server_errors(log: str, most: int = 3, lines_each: int = 60) -> list[str]:
    """The first ``most`` of the Django error reports in gunicorn's log (``Internal Server Error: /path``, its
    traceback), each with the ``lines_each`` lines that follow it (the traceback, perhaps a few lines more)."""
    lines = log.splitlines()
    starts = [n for n, line in enumerate(lines) if line.startswith("Internal Server Error:")][:most]
    return ["\n".join(lines[n:n + lines_each])[:6000] for n in starts]


def ingest_verdict(drill: str, record: Record, outcome: dict[str, Any], stored: dict[str, Any], *,
                   drops_allowed: bool) -> dict[str, Any]:
    """What the clients were told (``record``) against what is stored and debited (bench/_drill.py ``VERIFY``):
    the row, with every broken promise in its problems."""
    billable = {event_id for event_id, (is_billable, _reason) in stored["stored"].items() if is_billable}
    accepted = {event_id for event_id, status in record.outcome.items() if status == "accepted"}
    other = {event_id: status for event_id, status in record.outcome.items() if status != "accepted"}
    used = int(Decimal(stored["quota"]["used"]))
    fivexx = [a for a in record.answers if a.status >= 500 and not (a.status == 503 and a.retry_after)]
    retried = [a for a in record.answers if a.status == 503 and a.retry_after]
    drops = [a for a in record.answers if a.status == 0]
    odd = [a for a in record.answers if 0 < a.status < 500 and a.status != 200]
    row = _row(drill, "events", sent=len(record.outcome) + record.unanswered, stored=len(billable),
               lost=len(accepted - billable), double_counted=stored["duplicated_ids"] + max(0, used - len(billable)),
               **{"5xx": len(fivexx), "503_retried": len(retried)}, dropped_connections=len(drops),
               ledger_used=used, **{k: v for k, v in outcome.items() if k not in ("problems", "fault_at")})
    if fivexx:  # when each came, from the fault's start (monotonic ``fault_at``), and what it said: for the diagnosis
        at = outcome.get("fault_at")
        row["5xx_answers"] = [{"after_fault_s": None if at is None else round(a.at - at, 2), "status": a.status,
                               "body": a.detail[:300]} for a in fivexx[:20]]
    problems = list(outcome.get("problems", []))
    if row["lost"] or row["double_counted"] or used != len(billable):
        problems.append(f"{row['lost']} lost, {row['double_counted']} double-counted, ledger used {used} for "
                        f"{len(billable)} billable events")
    if len(billable - accepted) > record.unanswered:
        problems.append(f"{len(billable - accepted)} billable events no client was told were accepted")
    if other:
        problems.append(f"{len(other)} events not accepted, e.g. {list(other.items())[:3]}")
    if fivexx or odd:
        shown = [(a.status, a.detail[:120]) for a in (fivexx + odd)[:3]]
        problems.append(f"{len(fivexx) + len(odd)} answers other than 200 or 503 with Retry-After: {shown}")
    if drops and not drops_allowed:
        problems.append(f"{len(drops)} dropped connections, e.g. {drops[0].detail[:120]}")
    if row["recovery_s"] is None:
        problems.append("ingest did not recover")
    row["problems"] = problems
    return row


# --- (a) web workers killed ---------------------------------------------------------------------------------
def web_kill(stack: Stack, args: Any) -> dict[str, Any]:
    """SIGKILL a gunicorn worker in the middle of its requests, ``--app-kills`` times 2 s apart: its clients' batches
    are retried on the dropped connection and must end stored once and debited once."""
    def fault(record: Record) -> dict[str, Any]:
        assert stack.server is not None
        time.sleep(args.settle)
        recoveries: list[float | None] = []
        killed: set[int] = set()
        for _ in range(max(1, args.app_kills)):
            workers = children_of(stack.server.pid) - killed
            victim = min(workers)
            at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            killed.add(victim)
            recoveries.append(_first_acceptance_after(record, at, 60))
            time.sleep(2)
        time.sleep(args.settle)
        worst = None if None in recoveries else max(r for r in recoveries if r is not None)
        return {"recovery_s": None if worst is None else round(worst, 2), "workers_killed": len(killed)}

    record, outcome = _ingest(stack, args, "drill-web", fault)
    return _ingest_row(stack, "web workers SIGKILLed during ingest", "drill-web", record, outcome, drops_allowed=True)


# --- (c) PostgreSQL restarted -------------------------------------------------------------------------------
_UNAVAILABLE = "retried in"  # billing/common/tasks.py: "task NAME[ID] retried in 1.9 s (1 of 12): a store is unavailable"
_RETRIED = re.compile(r"task ([\w.]+)\[([0-9a-f-]+)\] retried in [\d.]+ s \(\d+ of \d+\): a store is unavailable")
_LOST = re.compile(r"Task ([\w.]+)\[([0-9a-f-]+)\] raised unexpected: (?:OperationalError|InterfaceError)")


def _wait_for(done: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def postgres(stack: Stack, args: Any) -> list[dict[str, Any]]:
    """PostgreSQL stopped (fast: connections cut) and started ``--hold`` seconds later under ingest: 503 with
    Retry-After meanwhile, never a 500; the same web processes reconnect. Meanwhile a one-off alert check is
    queued (as ingest queues one): it runs while the database is down, is retried with backoff and runs once it
    is back. Two rows: the ingest's, and the tasks' (``task_verdict``)."""
    since = len(stack.worker_log())
    customer_pk = stack.info["web"]["drill-pg"]
    task: dict[str, Any] = {}

    def fault(record: Record) -> dict[str, Any]:
        queue = stack.queue_armed("guardrails.alerts_check", args=(customer_pk,))  # needs Redis only
        time.sleep(args.settle)
        stopped = time.monotonic()
        stack.pg_stop()
        task["id"] = one_off = queue()
        # the database stays down until the check has met it (at once, but a busy machine may take longer than --hold)
        task["met"] = _wait_for(lambda: f"[{one_off}] {_UNAVAILABLE}" in stack.worker_log()[since:], 60)
        time.sleep(max(0.0, args.hold - (time.monotonic() - stopped)))
        stack.pg_start()
        back, task["back_epoch"] = time.monotonic(), time.time()
        recovered = _first_acceptance_after(record, back, 60)
        _wait_for(lambda: f"[{one_off}] succeeded" in stack.worker_log()[since:], 60)
        time.sleep(args.settle)
        return {"recovery_s": None if recovered is None else round(recovered, 2), "fault_at": stopped,
                "postgres_back_after_s": round(back - stopped, 2)}

    record, outcome = _ingest(stack, args, "drill-pg", fault)
    down = outcome.get("postgres_back_after_s", args.hold)  # --hold, or longer if the task took longer to meet it
    rows = [_ingest_row(stack, f"PostgreSQL down {down:.0f} s during ingest", "drill-pg", record, outcome,
                        drops_allowed=False)]
    return [*rows, {"key": "postgres-task", **task_verdict(stack.worker_log()[since:], task)}]


def task_verdict(log: str, task: dict[str, Any]) -> dict[str, Any]:
    """The tasks' row of the postgres drill, from the worker's log since the drill began: every task that met
    the outage (``sent``) was retried (a task that failed on the database without a retry is ``lost``: beat
    would run it again at best, a one-off never), the one-off alert check (``task``: its id, whether it met the
    outage, the epoch of the database's return) ran exactly once after the return (``recovery s``), and so did
    every retried alert check (beat's ticks may expire instead: anomalies; or outlive the wait: counted)."""
    one_off = task.get("id", "")
    retried = {task_id: name for name, task_id in _RETRIED.findall(log)}
    runs: dict[str, int] = {}
    for _at, task_id in _SUCCEEDED.findall(log):
        runs[task_id] = runs.get(task_id, 0) + 1
    unretried = sorted({f"{name}[{task_id}]" for name, task_id in _LOST.findall(log)})
    checks = {task_id for task_id, name in retried.items() if name == "guardrails.alerts_check"} | {one_off}
    never = sorted(checks - set(runs))
    ran_at = [t for at, task_id in _SUCCEEDED.findall(log) if task_id == one_off and (t := log_time(at))]
    recovery = round(min(ran_at) - task["back_epoch"], 2) if ran_at and "back_epoch" in task else None
    row = _row("a task queued while PostgreSQL is down", "tasks", sent=len(set(retried) | {one_off}),
               stored=sum(1 for task_id in set(retried) | {one_off} if runs.get(task_id)),
               lost=len(unretried) + len(never), double_counted=sum(max(0, runs.get(t, 0) - 1) for t in checks),
               recovery_s=recovery, **{"5xx": None, "503_retried": None}, one_off_task=one_off,
               tasks_retried=len(retried), tasks_failed_unretried=len(unretried))
    problems = []
    if not task.get("met"):
        problems.append(f"the alert check {one_off} queued during the outage never met it")
    if unretried:
        problems.append(f"{len(unretried)} tasks failed on the database and were not retried: {unretried[:3]}")
    if never:
        problems.append(f"{len(never)} alert checks retried (or queued) during the outage never ran: {never[:3]}")
    if row["double_counted"]:
        problems.append(f"alert checks ran more than once: {[t for t in checks if runs.get(t, 0) > 1][:3]}")
    if recovery is None or recovery > 60:
        problems.append(f"the one-off alert check did not run within 60 s of the database's return ({recovery})")
    row["problems"] = problems
    return row


# --- (b) Redis stopped --------------------------------------------------------------------------------------
_RECEIVED = re.compile(r"Task guardrails\.alerts_check\[([0-9a-f-]+)\] received")
_SUCCEEDED = re.compile(r"^(\[[^\]]+\]).*Task [\w.]+\[([0-9a-f-]+)\] succeeded", re.MULTILINE)


def _held_alert_check(stack: Stack, since: int, timeout: float = 60) -> str:
    """The id of an alert check the worker has received (queued with its countdown by ingest) and not run yet,
    from offset ``since`` of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = stack.worker_log()[since:]
        done = {task for _at, task in _SUCCEEDED.findall(text)}
        held = [task for task in _RECEIVED.findall(text) if task not in done]
        if held:
            return held[-1]
        time.sleep(0.1)
    raise RuntimeError("the worker never held an alert check queued by ingest")


def _recovered_after(stack: Stack, since_epoch: float, timeout: float) -> float | None:
    """Seconds from ``since_epoch`` to the first task the worker completed after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        times = [t for at, _task in _SUCCEEDED.findall(stack.worker_log()) if (t := log_time(at)) and t > since_epoch]
        if times:
            return min(times) - since_epoch
        time.sleep(0.2)
    return None


def redis(stack: Stack, args: Any) -> dict[str, Any]:
    """Redis stopped for ``--outage`` seconds under ingest, while the worker holds a delayed ``acks_late`` alert
    check: ingest answers throughout, the worker runs tasks again within 30 s, and every check runs once."""
    since = len(stack.worker_log())  # this drill's part of the log: earlier drills' checks are not its business

    def fault(record: Record) -> dict[str, Any]:
        time.sleep(args.settle)
        held = _held_alert_check(stack, since)
        fault_at = time.monotonic()
        stack.redis_stop()
        time.sleep(args.outage)
        problems = [] if stack.worker is not None and stack.worker.poll() is None else ["the worker died"]
        stack.redis_start()
        back, back_at = time.time(), time.monotonic()
        recovered = _recovered_after(stack, back, 60)
        if recovered is None or recovered > 30:
            problems.append(f"the worker ran no task within 30 s of Redis's return ({recovered})")
        deadline = time.monotonic() + VISIBILITY + 60
        while f"[{held}] succeeded" not in stack.worker_log() and time.monotonic() < deadline:
            time.sleep(0.5)
        return {"recovery_s": None if recovered is None else round(recovered, 2), "held_task": held, "problems": problems,
                "fault_at": fault_at, "redis_back_after_s": round(back_at - fault_at, 2)}

    record, outcome = _ingest(stack, args, "drill-redis", fault)
    # every check the worker received runs: those the last batches queued (5 s countdown), and any other it held
    # at the stop, handed out again after the visibility timeout
    deadline = time.monotonic() + VISIBILITY + 60
    while True:
        text = stack.worker_log()[since:]
        received = set(_RECEIVED.findall(text))
        runs: dict[str, int] = {}
        for _at, task in _SUCCEEDED.findall(text):
            runs[task] = runs.get(task, 0) + 1
        never = sorted(received - set(runs))
        if not never or time.monotonic() > deadline:
            break
        time.sleep(1)
    held = outcome.get("held_task", "")
    if never:
        lines = [line[:200] for line in text.splitlines() if never[0] in line]
        outcome.setdefault("problems", []).append(f"{len(never)} alert checks the worker received never ran: {never[:3]}; "
                                                  f"the first in the worker's log: {lines[:6]}")
    if runs.get(held) != 1:
        outcome.setdefault("problems", []).append(f"the held alert check {held} ran {runs.get(held, 0)} times")
    if "Unrecoverable error" in stack.worker_log() or stack.worker is None or stack.worker.poll() is not None:
        outcome.setdefault("problems", []).append("the worker stopped")
    if stack.beat is None or stack.beat.poll() is not None:
        outcome.setdefault("problems", []).append("beat stopped")
    outcome.update(alert_checks_received=len(received), alert_checks_run=sum(1 for t in received if t in runs))
    return _ingest_row(stack, f"Redis down {args.outage:.0f} s, a delayed task held", "drill-redis", record, outcome,
                       drops_allowed=False)


# --- (e) concurrent debits on one credit grant --------------------------------------------------------------
CREDIT_VERIFY = """
import json
from datetime import datetime, timezone
from billing.customers.models import Customer
from billing.guardrails.selectors import customer_balance
from billing.usage.models import UsageEvent
customer = Customer.objects.get(external_id='drill-credit')
credits = [c for c in customer_balance(customer=customer, now=datetime.now(timezone.utc))["credits"] if c["currency"] == "USD"]
print(json.dumps({"stored": {e: b for e, b in UsageEvent.objects.filter(customer=customer).values_list("event_id", "billable")},
                  "credits": credits[0]}))
"""


def _debit(port: int, key: str, event_id: str, start: threading.Barrier, answers: list[Answer],
           outcome: dict[str, str]) -> None:
    body = json.dumps({"event_id": event_id, "customer": "drill-credit", "meter": METER, "quantity": "1",
                       "timestamp": datetime.now().astimezone().isoformat()}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    start.wait(timeout=60)
    for _attempt in range(20):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/api/v1/events", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            answers.append(Answer(time.monotonic(), 0, None, detail=f"{type(exc).__name__}: {exc}"))
            time.sleep(0.5)
            continue
        finally:
            conn.close()
        answers.append(Answer(time.monotonic(), response.status, response.getheader("Retry-After"),
                              detail=data[:200].decode(errors="replace")))
        if response.status == 503:
            time.sleep(float(response.getheader("Retry-After") or 1))
            continue
        code = json.loads(data).get("error", {}).get("code", "") if response.status >= 400 else ""
        outcome[event_id] = "accepted" if response.status in (200, 201) else code or str(response.status)
        return


def credit(stack: Stack, args: Any) -> dict[str, Any]:
    """``--debits`` single events at once, each costing 0.10 against a grant of 5.00: exactly 50 accepted, the
    others refused with 402 insufficient_credits, the wallet at 0.00 and never below."""
    start = threading.Barrier(args.debits)
    answers: list[Answer] = []
    outcome: dict[str, str] = {}
    threads = [threading.Thread(target=_debit, args=(stack.port, stack.info["ingest"], f"debit-{n}", start, answers,
                                                     outcome)) for n in range(args.debits)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    took = time.monotonic() - began
    found = json.loads(stack.shell(CREDIT_VERIFY).strip().splitlines()[-1])
    billable = {e for e, b in found["stored"].items() if b}
    accepted = {e for e, o in outcome.items() if o == "accepted"}
    fits = int(Decimal(CREDIT) / Decimal("0.10"))
    available = Decimal(found["credits"]["available"])
    fivexx = [a for a in answers if a.status >= 500 and not (a.status == 503 and a.retry_after)]
    row = _row(f"{args.debits} concurrent debits on one credit", "debits", sent=args.debits, stored=len(billable),
               lost=len(accepted - billable), double_counted=len(billable - accepted) + max(0, len(billable) - fits),
               **{"5xx": len(fivexx), "503_retried": sum(1 for a in answers if a.status == 503 and a.retry_after)},
               recovery_s=None, seconds=round(took, 1), accepted=len(accepted), credit=CREDIT,
               credit_left=str(available), refused=sum(1 for o in outcome.values() if o == "insufficient_credits"))
    problems = []
    if len(accepted) != fits or len(billable) != fits or available != 0:
        problems.append(f"{len(accepted)} accepted, {len(billable)} stored billable, {available} left: the credit covers "
                        f"exactly {fits}")
    if len(outcome) != args.debits or set(outcome.values()) - {"accepted", "insufficient_credits"}:
        problems.append(f"{args.debits - len(outcome)} unanswered; outcomes {sorted(set(outcome.values()))}")
    if fivexx or any(a.status == 0 for a in answers):
        problems.append(f"errors: {[(a.status, a.detail[:120]) for a in answers if a.status >= 500 or not a.status][:3]}")
    row["problems"] = problems
    return row


# --- the run and the table ----------------------------------------------------------------------------------
APP_DRILLS = ("worker", "credit", "web-kill", "postgres", "redis")  # the order they run in (see run_app)


def run_app(args: Any, work: Any, names: list[str]) -> list[dict[str, Any]]:
    """The selected application drills on one stack, the worker drill first: beat's own rollup (every 120 s)
    and period close (every 300 s) would otherwise do the work the drill means to interrupt."""
    from _workerdrill import finalize_kill, rollup_kill

    stack = Stack(work / "app", workers=args.workers, pg_port=args.pg_port, redis_port=args.redis_port,
                  app_port=args.app_port)
    (work / "app").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    drills: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "worker": lambda: [rollup_kill(stack), finalize_kill(stack)], "credit": lambda: [credit(stack, args)],
        "web-kill": lambda: [web_kill(stack, args)], "postgres": lambda: postgres(stack, args),
        "redis": lambda: [redis(stack, args)]}
    try:
        stack.start()
        for name in APP_DRILLS:
            if name in names:
                print(f"[{time.strftime('%H:%M:%S')}] application drill: {name}", flush=True)
                try:
                    rows += [{"key": name, **row} for row in drills[name]()]  # a row may name its own key
                except Exception as exc:  # one drill's failure is its row's problem; the others still run
                    rows.append({"key": name, **_row(name, "-", problems=[f"{type(exc).__name__}: {exc}"])})
    finally:
        stack.stop()
    return rows


COLUMNS = (("drill", "drill"), ("unit", "counted"), ("sent", "sent"), ("stored", "stored"), ("lost", "lost"),
           ("double_counted", "double-counted"), ("5xx", "5xx"), ("503_retried", "503 retried"),
           ("recovery_s", "recovery s"), ("verdict", "verdict"))


def table(rows: list[dict[str, Any]]) -> str:
    """The drills' rows as one Markdown table (``-`` where a figure does not apply)."""
    cells = [[label for _key, label in COLUMNS]]
    for row in rows:
        shown = {**row, "verdict": "FAIL" if row["problems"] else "ok"}
        cells.append(["-" if shown.get(key) is None else f"{shown[key]:,}" if isinstance(shown[key], int)
                      else str(shown[key]) for key, _label in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) + " |" for line in cells]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)
