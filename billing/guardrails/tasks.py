from celery import shared_task

from billing.guardrails.alerts import AlertSendDeferred, alerts_check, alerts_sweep
from billing.guardrails.anomalies.detection import anomalies_sample
from billing.guardrails.anomalies.emails import anomaly_emails_send
from billing.guardrails.reservations import reservations_expire
from ledger.backends import get_ledger
from ledger.holds import sweep


@shared_task(name="guardrails.expire_reservations", acks_late=True)
def expire_reservations() -> int:
    """Idempotent: releasing what is due twice releases nothing more."""
    return reservations_expire()


@shared_task(name="guardrails.alerts_check", acks_late=True, autoretry_for=(AlertSendDeferred,), retry_backoff=30,
             retry_backoff_max=1800, retry_jitter=True, max_retries=12)
def alerts_check_task(customer_pk: int) -> int:
    """Safe to run any number of times, concurrently: each alert's email is claimed in the database
    before it is sent (billing.guardrails.alerts). Retries (about 12 over ~5 hours) only when the mail
    server could not take a message; the beat sweep goes on trying after that."""
    return alerts_check(customer_pk=customer_pk)


@shared_task(name="guardrails.alerts_sweep", acks_late=True)
def alerts_sweep_task() -> int:
    return alerts_sweep()


@shared_task(name="guardrails.post_held_debits", acks_late=True)
def post_held_debits() -> int:
    """Posts the held debits of ingest batches whose writer died between its commit and its post
    (ledger.holds); idempotent: a post already made answers ``exists``."""
    return sweep(get_ledger())


@shared_task(name="guardrails.anomalies_sample", acks_late=True, expires=15)
def anomalies_sample_task() -> int:
    """Idempotent: a sample per customer and minute, an anomaly per window's start (database keys). Expires
    with the next tick: a tick that waited in the queue is replaced by the next one."""
    from django.utils import timezone

    return len(anomalies_sample(now=timezone.now()))


@shared_task(name="guardrails.anomaly_emails", acks_late=True)
def anomaly_emails_task(anomaly_pk: int) -> int:
    """Sent at most once per anomaly (claimed in the database first)."""
    return anomaly_emails_send(anomaly_pk=anomaly_pk)
