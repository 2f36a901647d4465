import logging

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from billing.usage.partitions import partitions_ensure
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


@shared_task(name="usage.partitions_ensure")
def partitions_ensure_task() -> int:
    """Idempotent: creates only the months still missing (PostgreSQL; nothing on SQLite)."""
    outcomes = partitions_ensure(now=timezone.now(), ahead=settings.TOLLGATE_EVENT_PARTITIONS_AHEAD)
    for outcome in outcomes:
        if outcome.error:
            log.error("usage_event partition %s not created: %s", outcome.name, outcome.error)
    return sum(1 for o in outcomes if o.created)
