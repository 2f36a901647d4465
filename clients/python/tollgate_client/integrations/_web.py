"""What the ASGI and Django middlewares share: the per-request metering state a handler can adjust, the
balance check, and the 402 body (Tollgate's own error shape)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from .._core import Quantity, new_id
from ..errors import LimitExceeded

Mode = Literal["reserve", "check", "track"]


@dataclass
class MeteredRequest:
    """``request.state.tollgate`` (ASGI) or ``request.tollgate`` (Django): the handler may change ``quantity``
    (what is billed after the response), ``dimensions`` and ``trace``, or set ``skip`` to bill nothing."""

    customer: str
    meter: str
    quantity: Quantity
    dimensions: dict[str, str] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    skip: bool = False
    reservation: Any = None
    event_id: str = field(default_factory=new_id)  # fixed: a settle retried as a plain event is a duplicate

    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = {"event_id": self.event_id, "meter": self.meter, "quantity": self.quantity}
        if self.dimensions:
            event["dimensions"] = dict(self.dimensions)
        if self.trace:
            event["trace"] = dict(self.trace)
        return event


def limit_body(exc: LimitExceeded) -> bytes:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message, **exc.details}
    return json.dumps({"error": error}).encode()


def refusal_from_balance(balance: dict[str, Any], meter: str, quantity: Quantity) -> LimitExceeded | None:
    """``mode="check"``: refuse when the meter's quota (or the spend cap) has less left than ``quantity``.
    A read, not a hold: concurrent requests may together pass the limit (``reserve`` is exact)."""
    wanted = Decimal(str(quantity))
    for row in balance.get("quotas") or []:
        if row.get("meter") == meter and row.get("remaining") is not None and Decimal(str(row["remaining"])) < wanted:
            return LimitExceeded(402, "quota_exceeded", f"The period's hard limit for meter '{meter}' is reached.",
                                 details={"remaining": str(row["remaining"]), "unit": row.get("unit", "")})
    cap = balance.get("spend_cap")
    if isinstance(cap, dict) and cap.get("remaining") is not None and Decimal(str(cap["remaining"])) <= 0:
        return LimitExceeded(402, "spend_cap_exceeded", "The period's spend cap is reached.",
                             details={"remaining": str(cap["remaining"]), "unit": ""})
    return None
