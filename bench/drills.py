"""``make drills``: Tollgate under faults. Each drill prints a row of one table (events sent, stored, lost,
double-counted, 5xx answers other than a retried ``503`` with ``Retry-After``, recovery time); the command
exits 1 unless every row has 0 lost, 0 double-counted and 0 5xx and keeps its drill's other promises.

Drills (``--drills``, comma-separated; ``--schedule quick`` runs ledger,credit,web-kill,postgres):
  ledger    the ledger under faults on a three-replica TigerBeetle cluster (below; needs the tigerbeetle binary)
  worker    the Celery worker SIGKILLed mid-rollup, then mid-finalization; rollups and invoices compared with a
            recompute from the raw events, one invoice per customer, numbers without gaps
  credit    ``--debits`` (100) concurrent single events on one credit grant that covers half of them: exactly
            the credit is consumed, never more
  web-kill  gunicorn workers SIGKILLed (``--app-kills`` times) during ingest by 4 retrying clients
  postgres  PostgreSQL stopped and started ``--hold`` seconds later during ingest: 503 with Retry-After, never 500;
            a task queued meanwhile is retried and runs once it is back (a second row), no task is lost
  redis     Redis stopped for ``--outage`` seconds during ingest while the worker holds a delayed acks_late alert
            check: ingest answers throughout, the worker runs tasks within 30 s of Redis's return, every check runs
The application drills (all but ledger) share one stack of their own: a throwaway PostgreSQL and Redis,
gunicorn, a Celery worker and beat, the SQL ledger (bench/_stack.py); ``--database-url`` is the ledger
drill's only.

The ledger drill: gunicorn serves ``portal.wsgi`` on PostgreSQL and the cluster; 4 retrying clients send limited batches
(1 token per event) for one customer with a hard limit. Meanwhile (``--schedule full``):

1. one backup replica is SIGKILLed, and restarted 5 s later on its data file;
2. then the primary (the replica leading the current view, read from the replicas' logs), the same way;
3. then the whole cluster is killed and stays down for 20 s, then started again;
4. then a gunicorn worker is SIGKILLed in the middle of its requests, three times (the protocol between the
   event rows and the debits, ledger/holds.py: the retried batch must be stored once and debited once).

Then the hard limit is set (through the API, on the running app) a few hundred units above what was
accepted, the clients go on until it refuses them, and one last client tops it off to the last unit.
The drill fails unless: no event the app accepted is missing from the event table (0 lost), the ledger
debited exactly the stored billable events (0 double-debited), the quota's used units equal the hard
limit (exact), every answer while the cluster had no quorum was ``503`` with ``Retry-After`` and
``/readyz`` was ``503`` then, and ingest recovered from the ledger's outages without restarting the app (the
same gunicorn workers, but those killed on purpose).
``--schedule quick`` (the CI test) kills and restarts one backup replica, then kills app workers (step 4).

    .venv/bin/python bench/drills.py [--schedule quick] [--drills ledger,redis] [--database-url postgres://...] [--keep]

Without ``--database-url`` a throwaway PostgreSQL is started (bench/_pg.py); with one, a fresh database is
created on that server and dropped at the end. The results are printed as JSON, then the table, and written
to bench/results/drills-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, also when loaded by path

from _appdrills import APP_DRILLS, run_app, table
from _cluster import Cluster
from _drill import CUSTOMER, METER, VERIFY, Answer, Client, ReadyzWatcher, Record, check
from _http import PY, ROOT, start_server, stop_server, tail, wait_healthy, write_results
from _pg import free_port, pg_start, pg_stop, run
from _stack import children_of
from _tb import tb_binary

ALL_DRILLS = ("ledger", *APP_DRILLS)
QUICK_DRILLS = ("ledger", "credit", "web-kill", "postgres")  # CI's: about a minute beside the quick ledger schedule

PLAN = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
plans:
  - key: drill
    name: Drill
    currency: USD
    effective_from: "2020-01-01T00:00:00Z"
    charges:
      - {meter: llm_tokens, model: per_unit, unit_price: "0.001"}
    limits:
      - {meter: llm_tokens, hard: 1000000000}
"""
SETUP = """
from datetime import datetime, timezone
from billing.catalog.models import Plan
from billing.catalog.services import catalog_import, subscription_set
from billing.customers.services import api_key_create, customer_create
catalog_import(text=%(plan)r, actor='drill')
customer = customer_create(external_id=%(customer)r, name='Drill')
subscription_set(customer=customer, plan=Plan.objects.get(key='drill'), start=datetime(2020, 1, 1, tzinfo=timezone.utc),
                 now=datetime.now(timezone.utc), actor='drill')
print(api_key_create(name='drill ingest', scope='ingest')[1], api_key_create(name='drill admin', scope='admin')[1])
"""
NO_QUORUM_GRACE = 3.0  # a request in flight when the cluster stops may still end well, or wait out the ledger timeout


class Drill:
    """One drill: its database, cluster, app and clients, the fault schedule, and the verdict."""

    def __init__(self, args: argparse.Namespace, work: Path, database_url: str, binary: str) -> None:
        self.args, self.work, self.database_url = args, work, database_url
        ports = args.ports or [free_port() for _ in range(3)]
        self.cluster = Cluster(binary, work / "tigerbeetle", ports)
        self.env = {**os.environ, "DATABASE_URL": database_url, "TOLLGATE_DATA_DIR": str(work / "var"),
                    "TOLLGATE_RATE_LIMIT_PER_SECOND": "0", "LOG_LEVEL": "WARNING", "LEDGER_BACKEND": "tigerbeetle",
                    "TIGERBEETLE_ADDRESSES": self.cluster.addresses, "TIGERBEETLE_CLUSTER_ID": "0"}
        for name in ("REDIS_URL", "DJANGO_DEBUG", "DJANGO_SETTINGS_MODULE", "LEDGER_TIMEOUT_SECONDS"):
            self.env.pop(name, None)
        self.port = free_port()
        self.record = Record()
        self.phases: list[dict[str, Any]] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.killed_workers: set[int] = set()
        self.ingest_key = self.admin_key = ""

    def start(self) -> None:
        """Cluster up, migrate and create the drill's customer on it, then the app."""
        self.cluster.format()
        self.cluster.start_all()
        run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env)
        keys = subprocess.run([PY, "manage.py", "shell", "-c", SETUP % {"plan": PLAN, "customer": CUSTOMER}], cwd=ROOT,
                              env=self.env, check=True, capture_output=True, text=True).stdout.split()
        self.ingest_key, self.admin_key = keys[-2], keys[-1]
        self.server = start_server(self.env, self.port, self.args.workers, self.work / "gunicorn.log")
        problem = wait_healthy(self.port, timeout=120)
        if problem is not None:
            raise RuntimeError(f"the app did not come up: {problem}\n    {tail(self.work / 'gunicorn.log')}")
        self.wait_ready(timeout=120)

    def wait_ready(self, timeout: float) -> None:
        """Until /readyz answers 200: the replicas open their journals for several seconds before a quorum answers."""
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/readyz")
                response = conn.getresponse()
                last = f"{response.status} {response.read()[:300]!r}"
                if response.status == 200:
                    return
            except (OSError, http.client.HTTPException) as exc:
                last = f"{type(exc).__name__}: {exc}"
            finally:
                conn.close()
            time.sleep(0.5)
        raise RuntimeError(f"/readyz did not answer 200 within {timeout:.0f} s: {last}")

    def phase(self, name: str, seconds: float = 0.0) -> dict[str, Any]:
        entry = {"name": name, "start": time.monotonic(), "end": None}
        self.phases.append(entry)
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        if seconds:
            time.sleep(seconds)
            self.close(entry)
        return entry

    @staticmethod
    def close(entry: dict[str, Any]) -> None:
        entry["end"] = time.monotonic()

    def wait_rejoined(self, replica: int, before: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.cluster.normal_lines(replica) <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {replica} did not rejoin within {timeout:.0f} s: {self.cluster.tail(replica)}")
            time.sleep(0.2)

    def crash_and_restart(self, replica: int, label: str) -> None:
        before = self.cluster.normal_lines(replica)
        down = self.phase(f"{label}: replica {replica} SIGKILLed")
        self.cluster.kill(replica)
        time.sleep(self.args.hold)
        self.close(down)
        back = self.phase(f"{label}: replica {replica} restarted")
        self.cluster.start(replica)
        self.wait_rejoined(replica, before)
        time.sleep(self.args.settle)
        self.close(back)

    def first_acceptance_after(self, since: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.record.lock:
                done = [a.at for a in self.record.answers if a.at >= since and a.status == 200 and a.accepted]
            if done:
                return min(done)
            time.sleep(0.1)
        return None

    def whole_cluster_outage(self) -> None:
        down = self.phase(f"whole cluster killed for {self.args.outage:.0f} s")
        self.cluster.kill_all()
        time.sleep(self.args.outage)
        self.close(down)
        back = self.phase("whole cluster restarted")
        self.cluster.start_all()
        recovered = self.first_acceptance_after(back["start"], timeout=120)
        back["recovered_after_s"] = round(recovered - back["start"], 2) if recovered else None
        time.sleep(self.args.settle)
        self.close(back)

    def schedule(self) -> None:
        self.phase("warm-up", self.args.settle)
        primary = self.cluster.primary()
        backup = next(r for r in range(self.cluster.count) if r != primary)
        self.crash_and_restart(backup, "backup")
        if self.args.schedule == "full":
            self.crash_and_restart(self.cluster.primary(), "primary")
            self.whole_cluster_outage()
        if self.args.app_kills:
            self.app_worker_crashes()

    def app_worker_crashes(self) -> None:
        """SIGKILL a gunicorn worker in the middle of its requests, ``--app-kills`` times: whatever step of a limited
        batch it was in (holds taken, events stored, posts queued), the client's retry of that batch must end with
        it stored once and debited once. gunicorn starts a new worker; the clients retry on the dropped connection."""
        assert self.server is not None
        entry = self.phase(f"app worker SIGKILLed {self.args.app_kills} times, 2 s apart")
        for _ in range(self.args.app_kills):
            workers = children_of(self.server.pid)
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            self.killed_workers.add(victim)
            deadline = time.monotonic() + 60
            while len(children_of(self.server.pid) - self.killed_workers) < len(workers):
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not replace a killed worker within 60 s")
                time.sleep(0.2)
            time.sleep(2)
        time.sleep(self.args.settle)
        self.close(entry)

    def set_limit(self, hard: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("PUT", f"/api/v1/customers/{CUSTOMER}/overrides", body=json.dumps({"limits": [
            {"meter": METER, "hard": hard}]}), headers={"Authorization": f"Bearer {self.admin_key}",
                                                        "Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        if response.status != 200:
            raise RuntimeError(f"setting the hard limit answered {response.status}: {data[:300]!r}")

    def drive(self) -> int:
        """Clients and watcher through the schedule and the drain; returns the hard limit set at the drain."""
        stop, draining, watch_stop = threading.Event(), threading.Event(), threading.Event()
        deadline = time.monotonic() + self.args.deadline
        clients = [Client(n, self.port, self.ingest_key, self.record, self.args.batch, stop, draining, deadline)
                   for n in range(self.args.clients)]
        watcher = ReadyzWatcher(self.port, self.record, watch_stop)
        watcher.start()
        for client in clients:
            client.start()
        try:
            self.schedule()
            limit = self.record.accepted_count() + self.args.clients * self.args.batch + self.args.headroom
            drain = self.phase(f"drain: hard limit set to {limit} through the API")
            self.set_limit(limit)
            draining.set()
            for client in clients:
                client.join(timeout=max(1.0, deadline - time.monotonic()))
            self.close(drain)
            top = Client(99, self.port, self.ingest_key, self.record, 1, stop, draining, deadline)
            top.run()  # one event at a time until refused: the last unit, if the racing clients left one
            errors = [c.error for c in [*clients, top] if c.error] + [f"{c.name} still running" for c in clients if c.is_alive()]
            if errors:
                raise RuntimeError(f"clients failed: {errors}")
        finally:
            stop.set()
            watch_stop.set()
            watcher.join(timeout=15)
        return limit

    def stored(self) -> dict[str, Any]:
        out = self.work / "stored.json"
        run([PY, "manage.py", "shell", "-c", VERIFY % {"customer": CUSTOMER, "meter": METER, "out": str(out)}],
            cwd=ROOT, env=self.env)
        return json.loads(out.read_text())

    def stop(self) -> None:
        if self.server is not None:
            stop_server(self.server)
        self.cluster.kill_all()


def _in(entry: dict[str, Any], at: float, grace: float = 0.0) -> bool:
    return entry["start"] + grace <= at < (entry["end"] or float("inf"))


def _phase_row(entry: dict[str, Any], answers: list[Answer], readyz: list[tuple[float, int, str]]) -> dict[str, Any]:
    """One phase's answers by status, accepted and refused events, the longest stretch without an acceptance."""
    mine = [a for a in answers if _in(entry, a.at)]
    statuses: dict[str, int] = {}
    for answer in mine:
        statuses[str(answer.status)] = statuses.get(str(answer.status), 0) + 1
    end = entry["end"] or time.monotonic()
    accepted_at = [entry["start"], *sorted(a.at for a in mine if a.accepted), end]
    row = {"phase": entry["name"], "seconds": round(end - entry["start"], 1), "answers": statuses,
           "events_accepted": sum(a.accepted for a in mine), "events_refused": sum(a.refused for a in mine),
           "events_duplicate_on_retry": sum(a.duplicates for a in mine),
           "longest_without_acceptance_s": round(max(b - a for a, b in itertools.pairwise(accepted_at)), 2),
           "readyz": sorted({status for at, status, _ in readyz if _in(entry, at)})}
    row.update({k: v for k, v in entry.items() if k not in ("name", "start", "end")})
    return row


def _outage_problems(entry: dict[str, Any], answers: list[Answer], readyz: list[tuple[float, int, str]]) -> list[str]:
    """Without quorum (after the grace for requests in flight), every answer is 503 with Retry-After and so is /readyz."""
    problems = []
    no_quorum = [a for a in answers if _in(entry, a.at, NO_QUORUM_GRACE)]
    wrong = [a for a in no_quorum if a.status != 503 or not a.retry_after or a.accepted or a.refused]
    if not no_quorum or wrong:
        problems.append(f"without quorum: {len(no_quorum)} answers, {len(wrong)} not 503 with Retry-After: "
                        f"{[(a.status, a.detail[:80]) for a in wrong[:3]]}")
    ready = [(status, ledger) for at, status, ledger in readyz if _in(entry, at, NO_QUORUM_GRACE)]
    if not ready or any(status != 503 or ledger == "ok" for status, ledger in ready):
        problems.append(f"/readyz without quorum: {ready[:5]}")
    return problems


def phase_figures(record: Record, phases: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Per phase its figures; and the broken promises: about the outage, recovery, and the answers in general."""
    problems: list[str] = []
    report = [_phase_row(entry, record.answers, record.readyz) for entry in phases]
    for entry in phases:
        if entry["name"].startswith("whole cluster killed"):
            problems += _outage_problems(entry, record.answers, record.readyz)
        if "recovered_after_s" in entry and entry["recovered_after_s"] is None:
            problems.append("ingest did not recover within 120 s of the cluster's restart")
    crashes = [entry for entry in phases if entry["name"].startswith("app worker")]
    odd = [a for a in record.answers if (a.status not in (200, 503) or (a.status == 503 and not a.retry_after))
           and not (a.status == 0 and any(_in(entry, a.at) for entry in crashes))]  # the killed worker's connections
    if odd:
        problems.append(f"{len(odd)} answers neither 200 nor 503 with Retry-After, "
                        f"e.g. {[(a.status, a.detail[:120]) for a in odd[:3]]}")
    if 200 not in [status for _, status, _ in record.readyz[-3:]]:
        problems.append(f"/readyz did not come back to 200: {record.readyz[-3:]}")
    return report, problems


def run_drill(args: argparse.Namespace, work: Path, database_url: str, binary: str) -> dict[str, Any]:
    drill = Drill(args, work, database_url, binary)
    try:
        drill.start()
        assert drill.server is not None
        workers = children_of(drill.server.pid)
        limit = drill.drive()
        stored = drill.stored()
        still = children_of(drill.server.pid)
        alive = drill.server.poll() is None
    finally:
        drill.stop()
    figures, problems = check(drill.record, stored, limit)
    phases, more = phase_figures(drill.record, drill.phases)
    problems += more
    if not alive or not (workers - drill.killed_workers) <= still or len(still) != len(workers):
        problems.append(f"the app restarted: gunicorn alive={alive}, workers before {sorted(workers)} after {sorted(still)}"
                        f" (killed on purpose: {sorted(drill.killed_workers)})")
    answers = drill.record.answers
    return {"schedule": args.schedule, "clients": args.clients, "batch": args.batch, "gunicorn_workers": args.workers,
            "replicas": drill.cluster.count, "cache_grid": "128MiB", "cpus": os.cpu_count(), "totals": figures,
            "answers_5xx": sum(1 for a in answers if a.status >= 500 and not (a.status == 503 and a.retry_after)),
            "answers_503": sum(1 for a in answers if a.status == 503 and a.retry_after),
            "phases": phases, "problems": problems}


def ledger_row(results: dict[str, Any]) -> dict[str, Any]:
    """The ledger drill as a row of the drills' table: recovery is the whole cluster's (full schedule), else the
    longest stretch without an accepted batch while a replica was down or rejoining."""
    totals = results["totals"]
    restarted = [p.get("recovered_after_s") for p in results["phases"] if "recovered_after_s" in p]
    stretches = [p["longest_without_acceptance_s"] for p in results["phases"] if p["phase"].startswith("backup")]
    return {"key": "ledger", "drill": f"ledger cluster faults ({results['schedule']})", "unit": "events",
            "sent": totals["events_answered"] + totals["unanswered_at_end"], "stored": totals["stored_billable"],
            "lost": totals["lost"], "double_counted": totals["double_debited"] + totals["duplicated_ids"],
            "5xx": results["answers_5xx"], "503_retried": results["answers_503"],
            "recovery_s": restarted[0] if restarted else max(stretches, default=None), "problems": list(results["problems"])}


def _database(args: argparse.Namespace, work: Path) -> tuple[str, Any]:
    """A database for the drill and how to get rid of it: a fresh one on ``--database-url``'s server, else a
    throwaway server."""
    if not args.database_url:
        pg_dir = work / "pg"
        return pg_start(pg_dir, free_port(), "tollgate"), lambda: pg_stop(pg_dir)
    import psycopg

    base, _, _ = args.database_url.rpartition("/")
    name = f"tollgate_drill_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{base}/{name}", drop


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedule", choices=["full", "quick"], default="full",
                        help="the ledger drill's schedule, and the default selection of drills (see above)")
    parser.add_argument("--database-url", default="",
                        help="a PostgreSQL server to create the ledger drill's database on (default: a throwaway server)")
    parser.add_argument("--ports", type=lambda s: [int(p) for p in s.split(",")], default=None,
                        help="the three replicas' ports (default: free ones)")
    parser.add_argument("--clients", type=int, default=4, help="retrying ingest clients (the ledger and ingest drills)")
    parser.add_argument("--batch", type=int, default=10, help="events per request")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (4 threads each)")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds a killed replica, or PostgreSQL, stays down")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of steady ingest around each fault")
    parser.add_argument("--outage", type=float, default=20.0, help="seconds the whole cluster, or Redis, stays down")
    parser.add_argument("--app-kills", type=int, default=3,
                        help="gunicorn workers SIGKILLed under load, 2 s apart (ledger: 0 for none)")
    parser.add_argument("--headroom", type=int, default=300, help="units left under the hard limit at the drain")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for the whole ledger drill's ingest")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data files)")
    parser.add_argument("--drills", type=lambda s: [d for d in s.split(",") if d], default=None,
                        help=f"comma-separated, from: {','.join(ALL_DRILLS)} (default: all of them with --schedule full; "
                             f"{','.join(QUICK_DRILLS)} with --schedule quick)")
    parser.add_argument("--debits", type=int, default=100, help="concurrent debits in the credit drill")
    parser.add_argument("--pg-port", type=int, default=0, help="the application drills' PostgreSQL port (default: a free one)")
    parser.add_argument("--redis-port", type=int, default=0, help="the application drills' Redis port (default: a free one)")
    parser.add_argument("--app-port", type=int, default=0, help="the application drills' gunicorn port (default: a free one)")
    args = parser.parse_args(argv)
    if args.drills is None:
        args.drills = list(ALL_DRILLS if args.schedule == "full" else QUICK_DRILLS)
    unknown = sorted(set(args.drills) - set(ALL_DRILLS))
    if unknown:
        parser.error(f"unknown drills {unknown}: choose from {','.join(ALL_DRILLS)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tollgate-drill-"))
    os.chmod(work, 0o755)
    results: dict[str, Any] = {"drills": args.drills, "rows": [], "problems": []}
    started = time.monotonic()
    try:
        if "ledger" in args.drills:
            results.update(_ledger(args, work))
            results["rows"].append(ledger_row(results))
        app = [name for name in args.drills if name != "ledger"]
        if app:
            rows = run_app(args, work, app)
            results["rows"] += rows
            results["problems"] += [f"{row['drill']}: {problem}" for row in rows for problem in row["problems"]]
        results["wall_s"] = round(time.monotonic() - started, 1)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    print(table(results["rows"]))
    write_results(f"drills-{args.schedule}", results)
    return results


def _ledger(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    binary, where = tb_binary()
    if binary is None:
        raise SystemExit(f"the ledger drill needs a tigerbeetle 0.17.9 binary: {where} (or leave it out: --drills)")
    drop = None
    try:
        database_url, drop = _database(args, work)
        return run_drill(args, work, database_url, binary)
    finally:
        if drop is not None:
            drop()


if __name__ == "__main__":
    sys.exit(1 if main()["problems"] else 0)
