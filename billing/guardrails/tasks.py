from celery import shared_task

from billing.guardrails.reservations import reservations_expire


@shared_task(name="guardrails.expire_reservations", acks_late=True)
def expire_reservations() -> int:
    """Idempotent: releasing what is due twice releases nothing more."""
    return reservations_expire()
