"""Ending a customer's plan (the operator's cancel). Putting a customer on a plan is ``subscription_set``
in services.py; both go forward only: nothing ends before now or inside a closed period."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction

from billing.audit.services import audit_deleted, audit_record, snapshot
from billing.catalog import services
from billing.catalog.models import Subscription
from billing.common.calendar import next_period_start
from billing.common.errors import CommonCode, DomainError, validation_error


@transaction.atomic
def subscription_cancel(*, customer: Any, end: datetime | None, now: datetime, actor: str) -> Subscription:
    """End the customer's plan at ``end`` (None: the end of the current period, so the period is billed
    whole). Changes scheduled to start at or after ``end`` are dropped. Returns the subscription ended."""
    end = next_period_start(now) if end is None else end
    if end < now or end < services.closed_until_source():
        raise validation_error({"end": ["A plan ends now or later, never in the past."]})
    rows = list(Subscription.objects.select_for_update().filter(customer=customer).order_by("start"))
    covering = next((r for r in rows if r.start < end and (r.end is None or r.end >= end)), None)
    if covering is None:
        raise DomainError(CommonCode.NOT_FOUND, "The customer has no plan at that time to end.")
    for pending in (r for r in rows if r.start >= end):  # scheduled after the end: never starts
        audit_deleted(pending, snapshot(pending), actor=actor)
        pending.delete()
    if covering.end != end:
        before = snapshot(covering)
        covering.end = end
        covering.save(update_fields=["end"])
        audit_record(action="subscription.cancelled", obj=covering, before=before, after=snapshot(covering),
                     actor=actor)
    return covering
