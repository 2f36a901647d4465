"""Closing an anomaly, wherever it is decided: its review (``anomalies.review``) or lifting the pause it made
(``billing.guardrails.pauses``), so an anomaly never stays open in the queue with its pause gone."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from billing.audit.services import audit_record, snapshot
from billing.guardrails.models import Anomaly
from billing.guardrails.signals import anomaly_resolved

# what the audit log keeps of an anomaly (its sample series stays on the row)
AUDITED = ("public_id", "customer", "status", "currency", "opened_at", "window_start", "window_end", "window_spend",
           "baseline_rate", "factor", "min_spend", "window_minutes", "action", "pause", "resolution", "note",
           "resolved_by", "resolved_at")


def anomaly_close(locked: Anomaly, *, resolution: str, note: str, actor: str, now: datetime) -> None:
    """Resolve an open anomaly the caller holds locked, in the caller's transaction: audited, and announced
    (``anomaly_resolved``, for webhooks) once committed."""
    before = snapshot(locked, fields=AUDITED)
    locked.status, locked.resolution, locked.note = Anomaly.Status.RESOLVED, resolution, note
    locked.resolved_by, locked.resolved_at = actor, now
    locked.save(update_fields=["status", "resolution", "note", "resolved_by", "resolved_at"])
    audit_record(actor=actor, action="anomaly.resolved", obj=locked, before=before,
                 after=snapshot(locked, fields=AUDITED))
    pk = locked.pk
    transaction.on_commit(lambda: anomaly_resolved.send(sender=Anomaly, anomaly_pk=pk))
