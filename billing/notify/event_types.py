"""The event types an endpoint may subscribe to (docs/api.md, "Webhooks to the operator").

Append-only: a type, once published, keeps its name and the shape of its ``data``.
"""

from __future__ import annotations

INVOICE_FINALIZED = "invoice.finalized"
INVOICE_PAID = "invoice.paid"
INVOICE_VOIDED = "invoice.voided"
ALERT_SOFT_LIMIT = "alert.soft_limit"

# type -> what it reports; the ones without an emitter yet are accepted so endpoints can subscribe ahead
EVENT_TYPES: dict[str, str] = {
    INVOICE_FINALIZED: "An invoice was finalized (numbered, figures frozen).",
    INVOICE_PAID: "An invoice was paid (Stripe, or marked paid by an operator).",
    INVOICE_VOIDED: "An invoice was voided.",
    ALERT_SOFT_LIMIT: "A customer crossed a soft-limit alert threshold of a hard limit or its spend cap.",
    "budget.alert": "A budget crossed its soft threshold (not emitted yet).",
    "circuit.tripped": "An agent run's circuit breaker tripped (not emitted yet).",
    "run.killed": "An agent run was killed (not emitted yet).",
    "customer.paused": "A customer or project was paused (not emitted yet).",
    "anomaly.opened": "A spend anomaly was opened (not emitted yet).",
    "anomaly.resolved": "A spend anomaly was resolved (not emitted yet).",
}
