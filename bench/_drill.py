"""The ingest side of the drills (``make drills``): retrying clients that send limited batches to the app and
keep every answer, a /readyz watcher, and the check of what was stored and debited against what was answered.

A client sends batches of new events (1 token each, so that the quota's last unit is exact) and retries
the same batch, unchanged, on 503 (after its ``Retry-After``) and on a dropped connection or a timeout,
until it gets a final answer: as a real client must, since it cannot know whether an unanswered batch
was stored. Each event then ends ``accepted`` (``accepted``, or ``duplicate`` on a retry of a batch stored
before its answer was lost) or ``refused`` (``quota_exceeded``)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

CUSTOMER = "drill"
METER = "llm_tokens"


@dataclass
class Answer:
    """One HTTP answer (or failure) a client got: when, what, and what it said of its events."""

    at: float
    status: int  # 0: no answer (connection dropped, timeout)
    retry_after: str | None
    accepted: int = 0
    refused: int = 0
    duplicates: int = 0  # of the accepted: stored by an earlier try whose answer was lost (a retry after a drop)
    detail: str = ""


@dataclass
class Record:
    """Everything the clients and the watcher saw, under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: list[Answer] = field(default_factory=list)
    outcome: dict[str, str] = field(default_factory=dict)  # event_id -> accepted | refused | <other>
    readyz: list[tuple[float, int, str]] = field(default_factory=list)
    unanswered: int = 0  # events of batches still retried when the drill ended (never counted as lost)

    def answer(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)

    def accepted_count(self) -> int:
        with self.lock:
            return sum(1 for status in self.outcome.values() if status == "accepted")


def _event(event_id: str, customer: str = CUSTOMER) -> dict[str, Any]:
    return {"event_id": event_id, "customer": customer, "meter": METER, "quantity": "1",
            "timestamp": datetime.now(timezone.utc).isoformat(), "dimensions": {"model": "drill"}}


class Client(threading.Thread):
    """One retrying ingest client on its own keep-alive connection."""

    def __init__(self, number: int, port: int, key: str, record: Record, batch: int, stop: threading.Event,
                 draining: threading.Event, deadline: float, customer: str = CUSTOMER) -> None:
        super().__init__(name=f"drill-client-{number}", daemon=True)
        self.number, self.port, self.record, self.batch, self.customer = number, port, record, batch, customer
        self.stop, self.draining, self.deadline = stop, draining, deadline
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.conn: http.client.HTTPConnection | None = None
        self.error: str | None = None

    def run(self) -> None:
        try:
            sequence = 0
            while not self.stop.is_set():
                ids = [f"c{self.number}-{sequence + i}" for i in range(self.batch)]
                sequence += self.batch
                body = json.dumps({"events": [_event(event_id, self.customer) for event_id in ids]}).encode()
                results = self._until_answered(body)
                if results is None:
                    with self.record.lock:
                        self.record.unanswered += len(ids)
                    return
                refused = self._keep(results)
                if refused and self.draining.is_set():
                    return
        except Exception as exc:  # reported by the drill, never a silent thread death
            self.error = f"{type(exc).__name__}: {exc}"

    def _keep(self, results: list[dict[str, Any]]) -> int:
        refused = 0
        with self.record.lock:
            for result in results:
                status = result["status"]
                if status in ("accepted", "duplicate"):
                    outcome = "accepted"
                elif result.get("error", {}).get("code") == "quota_exceeded":
                    outcome, refused = "refused", refused + 1
                else:
                    outcome = f"{status}:{json.dumps(result.get('error'))[:200]}"
                self.record.outcome[result["event_id"]] = outcome
        return refused

    def _post(self, body: bytes) -> tuple[int, str | None, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        self.conn.request("POST", "/api/v1/events/batch", body=body, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, response.getheader("Retry-After"), response.read()

    def _until_answered(self, body: bytes) -> list[dict[str, Any]] | None:
        """The batch's results once it has a final answer; None if the drill's deadline passed first."""
        while time.monotonic() < self.deadline:
            try:
                status, retry_after, data = self._post(body)
            except (OSError, http.client.HTTPException) as exc:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                self.record.answer(Answer(time.monotonic(), 0, None, detail=f"{type(exc).__name__}: {exc}"))
                time.sleep(0.5)
                continue
            if status == 200:
                results = json.loads(data)["results"]
                accepted = sum(1 for r in results if r["status"] in ("accepted", "duplicate"))
                duplicates = sum(1 for r in results if r["status"] == "duplicate")
                self.record.answer(Answer(time.monotonic(), status, retry_after, accepted, len(results) - accepted,
                                          duplicates))
                return results
            self.record.answer(Answer(time.monotonic(), status, retry_after, detail=data[:300].decode(errors="replace")))
            time.sleep(float(retry_after) if status == 503 and retry_after else 1.0)
        return None


class ReadyzWatcher(threading.Thread):
    """GET /readyz twice a second: its status and its ledger check, for the drill's report."""

    def __init__(self, port: int, record: Record, stop: threading.Event) -> None:
        super().__init__(name="drill-readyz", daemon=True)
        self.port, self.record, self.stop = port, record, stop

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/readyz")
                response = conn.getresponse()
                ledger = json.loads(response.read()).get("checks", {}).get("ledger", "?")
                conn.close()
                entry = (time.monotonic(), response.status, str(ledger)[:120])
            except (OSError, http.client.HTTPException, ValueError) as exc:
                entry = (time.monotonic(), 0, f"{type(exc).__name__}: {exc}")
            with self.record.lock:
                self.record.readyz.append(entry)
            self.stop.wait(max(0.0, 0.5 - (time.monotonic() - started)))


# Run by ``manage.py shell`` in the app's environment once the clients stopped: post what the outbox still
# holds (what beat's post-held-debits does every 30 s), then read the stored events and the ledger's quota.
VERIFY = """
import json
from datetime import datetime, timezone
from django.db.models import Count
from billing.customers.models import Customer
from billing.guardrails.selectors import customer_balance
from billing.usage.models import UsageEvent
from ledger.backends import get_ledger
from ledger.holds import sweep
from ledger.models import HeldPost

swept = sweep(get_ledger(), older_than_seconds=0)
customer = Customer.objects.get(external_id=%(customer)r)
rows = UsageEvent.objects.filter(customer=customer)
quota = [q for q in customer_balance(customer=customer, now=datetime.now(timezone.utc))["quotas"] if q["meter"] == %(meter)r][0]
report = {"swept": swept, "outbox_left": HeldPost.objects.count(),
          "stored": {e: [b, r] for e, b, r in rows.values_list("event_id", "billable", "reason")},
          "duplicated_ids": rows.values("event_id").annotate(n=Count("id")).filter(n__gt=1).count(),
          "quota": quota}
with open(%(out)r, "w") as out:
    json.dump(report, out)
"""


def check(record: Record, stored: dict[str, Any], limit: int) -> tuple[dict[str, Any], list[str]]:
    """What the clients were told against what is stored and debited: the figures, and every broken promise."""
    events: dict[str, list[Any]] = stored["stored"]
    billable = {event_id for event_id, (is_billable, _reason) in events.items() if is_billable}
    accepted = {event_id for event_id, outcome in record.outcome.items() if outcome == "accepted"}
    refused = {event_id for event_id, outcome in record.outcome.items() if outcome == "refused"}
    other = {event_id: outcome for event_id, outcome in record.outcome.items() if outcome not in ("accepted", "refused")}
    quota = stored["quota"]
    used, reserved = int(float(quota["used"])), float(quota["reserved"])
    figures = {"events_answered": len(record.outcome), "accepted": len(accepted), "refused": len(refused),
               "unanswered_at_end": record.unanswered, "stored_billable": len(billable),
               "lost": len(accepted - billable), "stored_not_accepted": len(billable - accepted),
               "refused_but_billable": len(refused & billable), "duplicated_ids": stored["duplicated_ids"],
               "ledger_used": used, "ledger_reserved": reserved, "limit": limit,
               "double_debited": used - len(billable), "outbox_swept": stored["swept"]}
    problems = []
    if other:
        problems.append(f"{len(other)} events ended neither accepted nor refused, e.g. {list(other.items())[:3]}")
    if figures["lost"]:
        problems.append(f"{figures['lost']} accepted events are not stored billable (lost)")
    if figures["stored_not_accepted"] - record.unanswered > 0:
        problems.append(f"{figures['stored_not_accepted']} billable events no client was told were accepted")
    if figures["refused_but_billable"] or stored["duplicated_ids"]:
        problems.append(f"refused yet billable: {figures['refused_but_billable']}, ids stored twice: {stored['duplicated_ids']}")
    if used != len(billable) or reserved:
        problems.append(f"the ledger debited {used} (+{reserved} held) for {len(billable)} billable events")
    if used != limit:
        problems.append(f"quota not exact: {used} used of a hard limit of {limit}")
    return figures, problems
