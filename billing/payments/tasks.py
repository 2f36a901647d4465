"""Celery tasks of the Stripe integration: each takes ids, calls one service, retries with backoff.

Every task is idempotent (sync rows, leases and idempotency keys: services.py), so ``acks_late`` is on:
a worker dying mid-push redelivers the task and the push continues where it stopped.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from billing.payments import meters, paystack_services, reconcile, services, sweep, webhooks
from billing.payments.models import SyncState

MAX_RETRIES = 6  # then the beat task's sweep (every 5 minutes) takes over


def _retry_if_pending(task: Any, state: str, attempts: int) -> None:
    """A retryable failure: try again after the row's backoff; past MAX_RETRIES the sweep owns the row."""
    if state == SyncState.PENDING and attempts and task.request.retries < MAX_RETRIES:
        raise task.retry(countdown=services.backoff(attempts).total_seconds(), max_retries=MAX_RETRIES)


@shared_task(name="payments.customer_sync", bind=True, acks_late=True)
def stripe_customer_sync_task(self: Any, customer_pk: int) -> str:
    row = services.stripe_customer_sync(customer_pk=customer_pk)
    _retry_if_pending(self, row.state, row.attempts)
    return row.state


@shared_task(name="payments.invoice_push", bind=True, acks_late=True)
def stripe_invoice_push_task(self: Any, invoice_pk: int) -> str:
    row = services.stripe_invoice_push(invoice_pk=invoice_pk)
    if row is None:
        return "none"
    _retry_if_pending(self, row.state, row.attempts)
    return row.state


@shared_task(name="payments.event_process", acks_late=True)
def stripe_event_process_task(event_pk: int) -> str:
    return webhooks.stripe_event_process(event_pk=event_pk).status


@shared_task(name="payments.meter_report_push", bind=True, acks_late=True)
def meter_report_push_task(self: Any, report_pk: int) -> str:
    row = meters.meter_usage_push(report_pk=report_pk)
    _retry_if_pending(self, row.state, row.attempts)
    return row.state


@shared_task(name="payments.paystack_link", bind=True, acks_late=True)
def paystack_payment_link_task(self: Any, invoice_pk: int) -> str:
    row = paystack_services.paystack_payment_link(invoice_pk=invoice_pk)
    if row is None:
        return "none"
    _retry_if_pending(self, row.state, row.attempts)
    return row.state


@shared_task(name="payments.paystack_event_process", acks_late=True)
def paystack_event_process_task(event_pk: int) -> str:
    return paystack_services.paystack_event_process(event_pk=event_pk).status


@shared_task(name="payments.sync_pending")
def stripe_sync_pending_task() -> dict[str, int]:
    done = sweep.stripe_sync_pending()
    done["events"] = webhooks.stripe_events_retry_failed()
    done.update(paystack_services.paystack_sync_pending())
    return done


@shared_task(name="payments.reconcile")
def stripe_reconcile_task() -> dict[str, int]:
    return reconcile.stripe_invoices_reconcile()


@shared_task(name="payments.meter_usage_report")
def meter_usage_report_task() -> dict[str, int]:
    return meters.meter_usage_report()
