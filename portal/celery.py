"""The Celery app and the one beat schedule of Tollgate.

Each schedule entry says why it runs when it does.
"""

import gc
import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

# Every task retries with backoff when PostgreSQL or the ledger is away (billing/common/tasks.py); a string, as the
# class is loaded once Django is set up
app = Celery("tollgate", task_cls="billing.common.tasks:RetryWhenUnavailable")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# One queue per workload, so that one kind of work never waits behind another and each can get workers of its own
# (`celery -A portal worker -Q rollups`, docs/operations.md#queues). A worker started without -Q consumes all of
# them (they are all declared here), so one worker still runs everything on a small installation.
QUEUES = {
    # the guardrails ingest leans on: the soft-limit check queued seconds after a batch, reservations' expiry,
    # the held debits' posting (ledger.holds), anomaly sampling (opened within 60 s): short, latency-sensitive
    "ingest": ["guardrails.*"],
    # the hourly rollups and their drift check: long scans of the event table
    "rollups": ["usage.*"],
    # draft refreshes and period close: a query per customer, minutes at month end
    "invoicing": ["invoicing.*"],
    # Stripe: outbound HTTP that may wait out Stripe's timeouts
    "payments": ["payments.*"],
    # deliveries to the operator's endpoints: outbound HTTP to servers we do not control
    "webhooks": ["notify.*"],
    # the rest: the heartbeat
    "celery": [],
}


@worker_process_init.connect
def _freeze_what_is_loaded(**_: Any) -> None:
    """A pool process starts with Django, the apps and every task module loaded (forked from the worker):
    they live as long as it, so out of the collector's generations (as portal.wsgi does for web)."""
    gc.freeze()


app.conf.task_default_queue = "celery"
# each queue its own exchange and routing key: queues sharing a binding would each get a copy of every message
app.conf.task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES]
app.conf.task_routes = {pattern: {"queue": queue} for queue, patterns in QUEUES.items() for pattern in patterns}

app.conf.beat_schedule = {
    # Usage becomes rollups within a few minutes of arriving (reads and invoices use them next); each run
    # is one short transaction from the watermark, so a frequent schedule costs little.
    "usage-rollup": {"task": "usage.rollup", "schedule": 120.0},
    # A recomputation from raw events that logs any drift: hourly is enough to notice and cheap at our scale.
    "usage-rollup-check": {"task": "usage.rollup_check", "schedule": 3600.0},
    # Raw events are partitioned by month on PostgreSQL: this month and the next few exist ahead of their
    # first event (TOLLGATE_EVENT_PARTITIONS_AHEAD, 3 by default), so a daily run has months of slack; a run
    # that finds them all there does nothing (docs/scaling.md).
    "usage-partitions": {"task": "usage.partitions_ensure", "schedule": 86400.0},
    # Drafts are "kept current while the period is open": every 10 minutes keeps the invoice page within
    # minutes of the rollups; the upcoming-invoice API is always live anyway.
    "invoice-drafts": {"task": "invoicing.refresh_drafts", "schedule": 600.0},
    # Periods close one grace time after their end and are finalized one finalize delay later; every
    # 5 minutes means an invoice is final within ~10 minutes of the grace time passing.
    "close-periods": {"task": "invoicing.close_periods", "schedule": 300.0},
    # Reservations hold quota and money until their TTL: the SQL ledger has no clock of its own, so
    # timed-out holds are released every 15 s (TigerBeetle expires them itself; the sweep then only
    # marks the reservations expired). Each write and lookup also releases what is due first.
    "expire-reservations": {"task": "guardrails.expire_reservations", "schedule": 15.0},
    # A limited batch on TigerBeetle holds its debit, commits its events with the holds' posts (an outbox
    # row) and posts them (ledger.holds); a writer that died in between leaves the row: posted here, well
    # inside the holds' 5-minute timeout.
    "post-held-debits": {"task": "guardrails.post_held_debits", "schedule": 30.0},
    # Soft-limit alerts are checked a few seconds after ingest (billing.guardrails.alerts); this sweep is the
    # safety net for a check lost with the broker or a mail server that was down: every subscribed customer
    # is looked at every 5 minutes (one ledger lookup each), and claims never recorded as sent are reported.
    # A threshold crossed by usage the after-ingest check missed is thus emailed within 5 minutes.
    "alerts-sweep": {"task": "guardrails.alerts_sweep", "schedule": 300.0},
    # Spend anomalies must open within 60 s of a burst's start (contract): every 15 s the sampler reads each
    # watched customer's spend counter (one ledger lookup for all) and tests its window, so a burst is seen
    # by the second tick after it crosses the bar (docs/anomalies.md). A tick left in the queue expires.
    "anomalies-sample": {"task": "guardrails.anomalies_sample", "schedule": 15.0},
    # Stripe pushes that did not complete (an outage, a lost task, a refused request after an operator's
    # fix) and failed webhook events: each push backs off on its own (30 s ... 1 h, next_attempt_at), so
    # a 5-minute sweep only picks up what is due; it is cheap (indexed on state) and bounds the delay
    # of a lost task to 5 minutes.
    "payments-sync-pending": {"task": "payments.sync_pending", "schedule": 300.0},
    # Stripe-metered plans: report the hours the rollups completed (usage-rollup runs every 2 minutes),
    # and corrections of earlier hours. Every 10 minutes keeps Stripe's meters at most ~12 minutes behind
    # a closed hour, far inside Stripe's 35-day window, and each run sends only the hours that changed.
    "payments-meter-usage": {"task": "payments.meter_usage_report", "schedule": 600.0},
    # Pushed invoices compared with Stripe's (status, total): drift from missed webhooks or changes made in
    # Stripe's dashboard shows in the console. Daily is enough for something a person looks at, and each
    # run reads at most 500 invoices (least recently checked first).
    "payments-reconcile": {"task": "payments.reconcile", "schedule": 86400.0},
    # Outbound webhooks: a failed delivery backs off on its own (30 s doubling to 6 h, with jitter,
    # next_attempt_at); the sweep queues what is due, and re-queues a task lost with the broker or a dead
    # worker. Every 30 s keeps the first retries close to their schedule and costs one indexed query.
    "webhooks-sweep": {"task": "notify.sweep", "schedule": 30.0},
    # Proves that beat and a worker are alive end to end (readyz shows the last beat); once a
    # minute is frequent enough for an operator's probe and costs one row update.
    "ops-heartbeat": {
        "task": "portal.tasks.heartbeat",
        "schedule": float(os.environ.get("TOLLGATE_HEARTBEAT_SECONDS", "60")),  # settings.TOLLGATE_HEARTBEAT_SECONDS
    },
}
