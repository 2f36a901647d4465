"""What ingest says of each event (``IngestResult``) and what it carries of each on the way (``Row``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing.catalog.models import Meter
from billing.common.errors import CommonCode, DomainError
from billing.usage.contract import CleanEvent

ACCEPTED, DUPLICATE, REJECTED = "accepted", "duplicate", "rejected"


@dataclass(slots=True)
class IngestResult:
    event_id: str | None
    status: str
    error: DomainError | None = None  # a per-event result: answered in the batch, or raised for one event

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "status": self.status}
        if self.error is not None:
            out["error"] = self.error.as_dict()
        return out


@dataclass(slots=True)
class Row:
    index: int
    event: CleanEvent
    customer_pk: int
    project_pk: int | None
    meter_pk: int
    quantity: Decimal
    usage_at: datetime
    run_id: str
    fingerprint: str
    billable: bool = True
    reason: str = ""
    refusal: DomainError | None = None  # a hard limit said no: stored for audit as not billable, answered 402
    meter: Meter | None = None
    late: bool = False  # counts in a closed period: 422 period_closed unless it is a retry of a stored event
    api_key_pk: int | None = None  # the key that sent it (budgets may be scoped to one)


def compare(event_id: str, stored: str, incoming: str) -> IngestResult:
    if stored == incoming:
        return IngestResult(event_id, DUPLICATE)
    return IngestResult(
        event_id,
        REJECTED,
        DomainError(CommonCode.IDEMPOTENCY_CONFLICT, f"event_id '{event_id}' was already used with a different body."),
    )


def refused_or(row: Row, result: IngestResult) -> IngestResult:
    """A refused event is answered with its 402 unless its id turned out to hold another body (409)."""
    if row.refusal is None or (result.error is not None and result.error.code == CommonCode.IDEMPOTENCY_CONFLICT):
        return result
    return IngestResult(row.event.event_id, REJECTED, row.refusal)
