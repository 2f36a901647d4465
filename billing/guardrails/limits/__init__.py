"""Hard limits at ingest: every billable event of a customer under a limit debits the ledger before it is
accepted, in the same request (docs/ledger.md). Per event, all or nothing: usage counters (the period's
cumulative quantity per charge, for marginal pricing), the meter's quota (or, per aggregation, a bound on
each event or on distinct values), the spend cap and the prepaid credit wallet. One engine decides for
batches, single events and reservations alike: ``BatchDebit`` (batch.py), in Python on the accounts as
read, booked as one transfer per account and batch with what it assumed stated to the ledger."""

from billing.guardrails.limits.batch import BatchDebit
from billing.guardrails.limits.charges import counter_keys, matching_charges
from billing.guardrails.limits.events import CODES, MESSAGES, REFUSAL_CODES, Coverage, EventUsage, Refusal
from billing.guardrails.limits.subscribed import SubscribedPlans

__all__ = ["CODES", "MESSAGES", "REFUSAL_CODES", "BatchDebit", "Coverage", "EventUsage", "Refusal", "SubscribedPlans",
           "counter_keys", "matching_charges"]
