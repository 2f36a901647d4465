"""The guardrails' error codes (statuses: ``portal.errors.STATUS``). A refused event is stored as not
billable with reason ``rejected_<code>`` of one of the refusal codes."""

from __future__ import annotations

from billing.common.errors import ErrorCode


class GuardrailsCode(ErrorCode):
    QUOTA_EXCEEDED = "quota_exceeded"
    SPEND_CAP_EXCEEDED = "spend_cap_exceeded"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    BUDGET_EXCEEDED = "budget_exceeded"
    CIRCUIT_OPEN = "circuit_open"
    PAUSED = "paused"
    RESERVATION_CLOSED = "reservation_closed"
    PAUSE_OPERATOR_ONLY = "pause_operator_only"
    ANOMALY_ALREADY_RESOLVED = "anomaly_already_resolved"
