"""Celery tasks of the outbound webhooks: thin, each calls one service.

A delivery task attempts once: a failure sets the row's next attempt, and the beat's sweep queues it
when due (it also re-queues a task lost with the broker or a dead worker). Sending twice is possible
(a crash after the POST), so receivers dedup by the event id; ``acks_late`` is therefore harmless.
"""

from __future__ import annotations

from celery import shared_task

from billing.notify import services


@shared_task(name="notify.deliver", acks_late=True)
def webhook_deliver_task(delivery_pk: int) -> str:
    delivery = services.delivery_attempt(delivery_pk=delivery_pk)
    return delivery.state if delivery is not None else "none"


@shared_task(name="notify.sweep")
def webhooks_sweep_task() -> int:
    return services.deliveries_sweep()
