"""The event types an endpoint may subscribe to (docs/api.md, "Webhooks to the operator").

Append-only: a type, once published, keeps its name and the shape of its ``data``.
"""

from __future__ import annotations

INVOICE_FINALIZED = "invoice.finalized"
INVOICE_PAID = "invoice.paid"
INVOICE_VOIDED = "invoice.voided"
ALERT_SOFT_LIMIT = "alert.soft_limit"
BUDGET_ALERT = "budget.alert"
CIRCUIT_TRIPPED = "circuit.tripped"
RUN_KILLED = "run.killed"
CUSTOMER_PAUSED = "customer.paused"
ANOMALY_OPENED = "anomaly.opened"
ANOMALY_RESOLVED = "anomaly.resolved"

# type -> what it reports; the ones without an emitter yet are accepted so endpoints can subscribe ahead
EVENT_TYPES: dict[str, str] = {
    INVOICE_FINALIZED: "An invoice was finalized (numbered, figures frozen).",
    INVOICE_PAID: "An invoice was paid (Stripe, or marked paid by an operator).",
    INVOICE_VOIDED: "An invoice was voided.",
    ALERT_SOFT_LIMIT: "A customer crossed a soft-limit alert threshold of a hard limit or its spend cap.",
    BUDGET_ALERT: "A budget crossed its soft threshold (once per budget and period), or an alert-only budget was exceeded.",
    CIRCUIT_TRIPPED: "An agent run's circuit breaker tripped: its later events and reservations are refused.",
    RUN_KILLED: "An agent run was killed (the kill switch).",
    CUSTOMER_PAUSED: "A customer or one of its projects was paused (by the operator, the customer or an anomaly).",
    ANOMALY_OPENED: "A customer's spend in its anomaly window exceeded its min_spend and factor times its baseline.",
    ANOMALY_RESOLVED: "A spend anomaly was resolved by an operator (resume or keep_paused).",
}
