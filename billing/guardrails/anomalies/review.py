"""Resolving an anomaly (the review queue, the API): ``resume`` lifts the pause it made, ``keep_paused``
leaves the customer paused (lifting that pause later is an operator's act, from the pauses API or the
console). Either way the anomaly is closed, with who and why; lifting its pause before any review closes
it as ``resume`` (``billing.guardrails.pauses``)."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from billing.common.errors import DomainError, validation_error
from billing.guardrails.anomaly_closing import anomaly_close
from billing.guardrails.errors import GuardrailsCode
from billing.guardrails.models import Anomaly
from billing.guardrails.pauses import pause_lift

NOTE_MAX = 2000


def anomaly_resolve(*, anomaly: Anomaly, resolution: str, note: str = "", actor: str, now: datetime) -> Anomaly:
    """Resolve an open anomaly. The same resolution again answers the anomaly as it is (a retry); another one
    on a resolved anomaly is a conflict."""
    if resolution not in Anomaly.Resolution.values:
        raise validation_error({"resolution": ["Must be 'resume' or 'keep_paused'."]})
    if len(note) > NOTE_MAX:
        raise validation_error({"note": [f"At most {NOTE_MAX} characters."]})
    with transaction.atomic():
        locked = Anomaly.objects.select_for_update().get(pk=anomaly.pk)  # customer and pause: read after the lock
        if locked.status == Anomaly.Status.RESOLVED:
            if locked.resolution == resolution:
                return locked
            raise DomainError(GuardrailsCode.ANOMALY_ALREADY_RESOLVED,
                              f"This anomaly was resolved already ({locked.resolution}).")
        anomaly_close(locked, resolution=resolution, note=note, actor=actor, now=now)
        if resolution == Anomaly.Resolution.RESUME and locked.pause is not None:
            pause_lift(customer=locked.customer, pause_id=locked.pause.pause_id, actor=actor, operator=True)
    locked.refresh_from_db()
    return locked
