"""The application stack of the application drills (``make drills``): a throwaway PostgreSQL and Redis of
the drill's own (it stops and restarts them), gunicorn, one Celery worker and beat, all on loopback, with
the SQL ledger. Every process is started in a session of its own, so that a fault (SIGKILL of a worker, a
Redis stop, a PostgreSQL restart) hits exactly what the drill means to hit and nothing else.

Redis appends to a file (``--appendonly yes``) and is stopped with SIGTERM: a restart keeps the queues and
the messages a worker held, as production Redis must (docs/operations.md). The broker's visibility timeout
is shortened to ``VISIBILITY`` seconds so that a message a killed or cut-off worker held comes back within
the drill (production: 2 hours)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from _http import PY, ROOT, start_server, stop_server, tail, wait_healthy
from _pg import SETTINGS, as_postgres, free_port, pg_bin, pg_start, pg_stop, run

VISIBILITY = 60  # seconds: TOLLGATE_BROKER_VISIBILITY_TIMEOUT in the drill, longer than any of its tasks runs here
WEB_CUSTOMERS = ("drill-web", "drill-pg", "drill-redis")  # one per ingest drill, so their figures stay apart
INVOICE_CUSTOMERS = 100  # the worker drill's customers, billed for last month
CREDIT = "5.00"  # the credit drill's grant, in USD; each debit costs 0.10
PLANS = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
plans:
  - key: drill
    name: Drill
    currency: USD
    effective_from: "2020-01-01T00:00:00Z"
    base_fee: "10.00"
    charges:
      - {meter: llm_tokens, model: per_unit, unit_price: "0.001"}
    limits:
      - {meter: llm_tokens, soft: 100, hard: 1000000000}
  - key: drill-credit
    name: Drill credit
    currency: USD
    effective_from: "2020-01-01T00:00:00Z"
    charges:
      - {meter: llm_tokens, model: per_unit, unit_price: "0.10"}
"""
# Run by ``manage.py shell`` before web, worker and beat start: the catalog, the customers (the worker drill's
# subscribed from last month's first instant, before anything closed it), the credit grant, two API keys.
SETUP = """
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from billing.catalog.models import Meter, Plan
from billing.catalog.services import catalog_import, subscription_set
from billing.common.calendar import period_bounds
from billing.customers.services import api_key_create, customer_create
from billing.guardrails.services import credits_grant

now = datetime.now(timezone.utc)
this_month, _ = period_bounds(now)
last_month, _ = period_bounds(this_month - timedelta(seconds=1))
catalog_import(text=%(plans)r, actor='drill')
drill, credit = Plan.objects.get(key='drill'), Plan.objects.get(key='drill-credit')
web = {}
for name in %(web)r:
    customer = customer_create(external_id=name, name=name)
    subscription_set(customer=customer, plan=drill, start=this_month, now=now, actor='drill')
    web[name] = customer.pk
billed = []
for n in range(%(invoiced)d):
    customer = customer_create(external_id=f'drill-inv-{n:03d}', name=f'Billed {n}')
    subscription_set(customer=customer, plan=drill, start=last_month, now=last_month, actor='drill')
    billed.append(customer.pk)
customer = customer_create(external_id='drill-credit', name='Credit')
subscription_set(customer=customer, plan=credit, start=this_month, now=now, actor='drill')
credits_grant(customer=customer, amount=Decimal(%(credit)r), currency='USD', idempotency_key='drill', actor='drill')
print(json.dumps({"ingest": api_key_create(name='drill ingest', scope='ingest')[1],
                  "admin": api_key_create(name='drill admin', scope='admin')[1], "billed": billed,
                  "meter": Meter.objects.get(key='llm_tokens').pk, "web": web, "last_month": last_month.isoformat(),
                  "this_month": this_month.isoformat()}))
"""


def children_of(pid: int) -> set[int]:
    """The pids whose parent is ``pid`` (gunicorn's workers, from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def _killpg(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class Stack:
    """PostgreSQL, Redis, gunicorn, a worker and beat in ``work``; ``start()``, the faults, ``stop()``."""

    def __init__(self, work: Path, *, workers: int, pg_port: int = 0, redis_port: int = 0, app_port: int = 0) -> None:
        self.work, self.workers = work, workers
        self.pg_port, self.redis_port = pg_port or free_port(), redis_port or free_port()
        self.port = app_port or free_port()
        self.pg_dir = work / "pg"
        self.database_url = ""
        self.redis: subprocess.Popen[bytes] | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.beat: subprocess.Popen[bytes] | None = None
        self.worker_starts = 0
        self.info: dict[str, Any] = {}
        self.env: dict[str, str] = {}

    # --- processes ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("the application drills need redis-server (apt-get install redis-server)")
        self.database_url = pg_start(self.pg_dir, self.pg_port, "tollgate")
        self.redis_start()
        self.env = {k: v for k, v in os.environ.items() if k not in {
            "DJANGO_DEBUG", "DJANGO_SETTINGS_MODULE", "TIGERBEETLE_ADDRESSES", "LEDGER_BACKEND", "CELERY_TASK_ALWAYS_EAGER",
            "LEDGER_TIMEOUT_SECONDS"}}
        self.env.update({"DATABASE_URL": self.database_url, "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                         "TOLLGATE_DATA_DIR": str(self.work / "var"), "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
                         # the limiter stays on (its Redis calls must fail open in the Redis drill), far above the load
                         "TOLLGATE_RATE_LIMIT_PER_SECOND": "100000",
                         "TOLLGATE_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY), "TOLLGATE_FINALIZE_DELAY_SECONDS": "0"})
        run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env)
        out = self.shell(SETUP % {"plans": PLANS, "web": list(WEB_CUSTOMERS), "invoiced": INVOICE_CUSTOMERS,
                                  "credit": CREDIT})
        self.info = json.loads(out.strip().splitlines()[-1])
        self.server = start_server(self.env, self.port, self.workers, self.work / "gunicorn.log")
        self.start_worker()
        with (self.work / "beat.log").open("ab") as log:
            self.beat = subprocess.Popen([PY, "-m", "celery", "-A", "portal", "beat", "-l", "info"], cwd=ROOT,
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        problem = wait_healthy(self.port, timeout=120)
        if problem is not None:
            raise RuntimeError(f"the app did not come up: {problem}\n    {tail(self.work / 'gunicorn.log')}")
        self.wait_for_log(" ready.", 120, since=0)

    def start_worker(self) -> None:
        """The production worker command (docs/operations.md), two pool processes, its log appended to."""
        self.worker_starts += 1
        with (self.work / "worker.log").open("ab") as log:
            log.write(f"--- worker start {self.worker_starts}\n".encode())
            self.worker = subprocess.Popen([PY, "-m", "celery", "-A", "portal", "worker", "-l", "info", "--concurrency",
                                            "2"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)

    def kill_worker(self) -> None:
        """SIGKILL the worker's main process and its pool at once, as a host crash or the OOM killer would."""
        _killpg(self.worker, signal.SIGKILL)

    def redis_start(self) -> None:
        folder = self.work / "redis"
        folder.mkdir(exist_ok=True)
        with (folder / "log").open("ab") as log:
            self.redis = subprocess.Popen(
                [str(shutil.which("redis-server")), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes", "--dir", str(folder)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        import redis

        while True:
            try:
                redis.Redis(port=self.redis_port, socket_timeout=1).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer within 20 s") from None
                time.sleep(0.1)

    def redis_stop(self) -> None:
        """A clean stop (SIGTERM): the append-only file is complete, as after a restart in production."""
        _killpg(self.redis, signal.SIGTERM)

    def pg_stop(self) -> None:
        run(as_postgres([pg_bin("pg_ctl"), "-D", str(self.pg_dir / "data"), "-m", "fast", "-w", "stop"]),
            stdout=subprocess.DEVNULL)

    def pg_start(self) -> None:
        run(as_postgres([pg_bin("pg_ctl"), "-D", str(self.pg_dir / "data"), "-l", str(self.pg_dir / "log"), "-w", "-o",
                         f"-p {self.pg_port} -k {self.pg_dir} {SETTINGS}", "start"]), stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.server is not None:
            stop_server(self.server)
        _killpg(self.beat, signal.SIGTERM)
        _killpg(self.worker, signal.SIGTERM)
        self.redis_stop()
        pg_stop(self.pg_dir)

    # --- reading what happened -----------------------------------------------------------------------------
    def shell(self, code: str) -> str:
        """``manage.py shell -c code`` in the app's environment; its standard output."""
        done = subprocess.run([PY, "manage.py", "shell", "-c", code], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"manage.py shell failed: {done.stderr[-2000:]}")
        return done.stdout

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        """The first column of the first row of ``query`` (a fresh connection: the server may have restarted)."""
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute(query, params).fetchone()
        return row[0] if row else None

    def queue(self, task: str, countdown: int = 0, args: tuple[Any, ...] = ()) -> str:
        """Queue ``task`` with ``args`` as the app does (its route, its queue); returns the task id. Needs Redis,
        not the database."""
        code = (f"from billing.common.queue import task_named\n"
                f"print(task_named({task!r}).apply_async(args={list(args)!r}, countdown={countdown}).id)")
        return self.shell(code).split()[-1]

    def queue_armed(self, task: str, args: tuple[Any, ...] = ()) -> Callable[[], str]:
        """``queue`` in two steps, for a fault: a ``manage.py shell`` is started now and waits; the function
        returned queues ``task`` at once (no start-up in between) and returns its id."""
        code = (f"import sys\nfrom billing.common.queue import task_named\ntask = task_named({task!r})\n"
                "with task.app.producer_or_acquire() as producer:\n"  # connected before the fault, kept in the pool
                "    producer.connection.ensure_connection()\n"
                f"print('armed', flush=True)\nsys.stdin.readline()\nprint(task.apply_async(args={list(args)!r}).id)")
        shell = subprocess.Popen([PY, "manage.py", "shell", "-c", code], cwd=ROOT, env=self.env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert shell.stdin is not None and shell.stdout is not None
        while "armed" not in (line := shell.stdout.readline()):
            if not line:
                raise RuntimeError(f"manage.py shell could not get ready to queue {task}")

        def fire() -> str:
            assert shell.stdin is not None and shell.stdout is not None
            shell.stdin.write("go\n")
            shell.stdin.close()
            out = shell.stdout.read()
            if shell.wait(timeout=60):
                raise RuntimeError(f"manage.py shell failed to queue {task}")
            return out.split()[-1]

        return fire

    def worker_log(self) -> str:
        return (self.work / "worker.log").read_text(errors="replace")

    def wait_for_log(self, needle: str, seconds: float, since: int) -> float:
        """Seconds until ``needle`` appears in the worker's log after offset ``since``."""
        start = time.monotonic()
        while needle not in self.worker_log()[since:]:
            if time.monotonic() - start > seconds:
                raise RuntimeError(f"not in the worker's log within {seconds:.0f} s: {needle!r}\n    "
                                   f"{tail(self.work / 'worker.log', 20)}")
            time.sleep(0.2)
        return time.monotonic() - start


def log_time(line: str) -> float | None:
    """The epoch seconds of a Celery log line (``[2026-12-07 15:40:01,234: INFO/...]``, local time)."""
    try:
        return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None
