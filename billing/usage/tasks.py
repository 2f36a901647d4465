import logging

from celery import shared_task
from django.utils import timezone

from billing.usage.rollups import rollup_check, rollup_until_current

log = logging.getLogger(__name__)


@shared_task(name="usage.rollup", acks_late=True)
def rollup() -> int:
    """Idempotent: the watermark moves in the same transaction as the rollups it covers."""
    return rollup_until_current(now=timezone.now())


@shared_task(name="usage.rollup_check")
def rollup_check_task() -> int:
    drift = rollup_check()
    for line in drift:
        log.error("rollup drift: %s", line)
    return len(drift)
