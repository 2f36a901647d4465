from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from billing.invoicing.services import drafts_refresh, periods_close, periods_finalize
from billing.usage.rollups import rollup_until_current


@shared_task(name="invoicing.refresh_drafts", acks_late=True)
def refresh_drafts() -> int:
    """Idempotent: recomputes each open period's draft from the rollups."""
    return drafts_refresh(now=timezone.now())


@shared_task(name="invoicing.close_periods", acks_late=True)
def close_periods() -> int:
    """Close what is due, then finalize periods closed at least the finalize delay ago (normally the
    previous run's): a rerun or a crash midway only finalizes what is still a draft."""
    now = timezone.now()
    periods_close(now=now)
    rollup_until_current(now=now)
    return len(periods_finalize(now=now))
