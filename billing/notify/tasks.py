"""Celery tasks of the outbound webhooks: thin, each calls one service.

A delivery task attempts once: a failure sets the row's next attempt, and the beat's sweep queues it
when due (it also re-queues a task lost with the broker or a dead worker). Sending twice is possible
(a crash after the POST), so receivers dedup by the event id; ``acks_late`` is therefore harmless.
"""

from __future__ import annotations

from celery import shared_task

from billing.notify import invoice_emails, services


@shared_task(name="notify.deliver", acks_late=True)
def webhook_deliver_task(delivery_pk: int) -> str:
    delivery = services.delivery_attempt(delivery_pk=delivery_pk)
    return delivery.state if delivery is not None else "none"


@shared_task(name="notify.sweep")
def webhooks_sweep_task() -> int:
    """Also queues again the invoice emails whose task was lost."""
    return services.deliveries_sweep() + invoice_emails.invoice_emails_sweep()


@shared_task(name="notify.invoice_email", acks_late=True, autoretry_for=(invoice_emails.InvoiceEmailDeferred,),
             retry_backoff=60, retry_backoff_max=3600, retry_jitter=True, max_retries=12)
def invoice_email_task(row_pk: int) -> str:
    """Sent once: claimed in the database before the send; retried only when the server took nothing."""
    return invoice_emails.invoice_email_deliver(row_pk=row_pk)
