"""Ingest's public entry points; the pipeline itself is ``billing.usage.ingest``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from billing.guardrails.models import Reservation
from billing.usage.ingest import ACCEPTED, DUPLICATE, REJECTED, IngestResult, events_ingest, meters_cached


def reservation_settle(*, reservation: Reservation, principal: Any, raw_events: list[Any],
                       now: datetime | None = None) -> list[Any]:
    """Ingest the actual usage against the reservation's holds, then mark it settled (idempotent). Here,
    not with the reservations (billing.guardrails.reservations): settling is an ingest, and usage sits
    above guardrails."""
    now = now or timezone.now()
    results = events_ingest(principal=principal, raw_events=raw_events, now=now, reservation=reservation)
    if reservation.state == Reservation.State.PENDING:
        expired = now >= reservation.expires_at
        reservation.state = Reservation.State.EXPIRED if expired else Reservation.State.SETTLED
        reservation.closed_at = now
        reservation.save(update_fields=["state", "closed_at"])
    return results


__all__ = ["ACCEPTED", "DUPLICATE", "REJECTED", "IngestResult", "events_ingest", "meters_cached", "reservation_settle"]
