"""Hard limits at ingest: every billable event of a customer under a limit debits the ledger before it is
accepted, in the same request (docs/ledger.md). Per event, all or nothing: usage counters (the period's
cumulative quantity per charge, for marginal pricing), the meter's quota, the spend cap and the prepaid
credit wallet. Two ways of writing it: ``enforce`` (chains.py: one linked chain per event, decided by the
ledger) and ``BatchDebit`` (batch.py: the batch decided in Python, one transfer per account)."""

from billing.guardrails.limits.batch import BatchDebit
from billing.guardrails.limits.chains import enforce
from billing.guardrails.limits.charges import counter_keys, marginal_cost, matching_charges
from billing.guardrails.limits.events import CODES, MESSAGES, Coverage, EventUsage, Refusal
from billing.guardrails.limits.terms import Terms

__all__ = ["CODES", "MESSAGES", "BatchDebit", "Coverage", "EventUsage", "Refusal", "Terms", "counter_keys", "enforce",
           "marginal_cost", "matching_charges"]
