"""What the limits decide about: an event's usage (``EventUsage``), what a reservation already covers
(``Coverage``), a refusal and the error it answers with (``Refusal``), and the ledger codes of the usage legs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing.catalog.models import Meter
from billing.common.errors import DomainError
from billing.guardrails import accounts as acc
from billing.guardrails.errors import GuardrailsCode
from ledger.codes import AccountCode, TransferCode

ADDITIVE = {Meter.Aggregation.SUM, Meter.Aggregation.COUNT}


# How a meter's hard limit applies (contract: "Limits per aggregation"): to the period's total (sum, count:
# a quota account), to each event on its own (max, latest: no account), or to the period's distinct
# values of its ``unique_by`` dimension (unique_count: a quota account, and one bounded account per value)
TOTAL, EACH, UNIQUE_VALUES = "total", "each", "unique"
LIMIT_KIND: dict[str, str] = {Meter.Aggregation.SUM: TOTAL, Meter.Aggregation.COUNT: TOTAL, Meter.Aggregation.MAX: EACH,
              Meter.Aggregation.LATEST: EACH, Meter.Aggregation.UNIQUE_COUNT: UNIQUE_VALUES}


LINEAR = {"per_unit"}  # charge models whose marginal price needs no running total (no usage counter)


CODES = {"quota": GuardrailsCode.QUOTA_EXCEEDED, "spend": GuardrailsCode.SPEND_CAP_EXCEEDED,
         "credits": GuardrailsCode.INSUFFICIENT_CREDITS, "budget": GuardrailsCode.BUDGET_EXCEEDED,
         "run_steps": GuardrailsCode.CIRCUIT_OPEN, "run_spend": GuardrailsCode.CIRCUIT_OPEN,
         "run_duration": GuardrailsCode.CIRCUIT_OPEN}

# the breaker a run leg trips (Run.breaker, the contract's run_limits keys)
BREAKERS = {"run_steps": "max_steps", "run_spend": "max_spend", "run_duration": "max_duration_seconds"}


# every code a refused event is stored with (reason ``rejected_<code>``): the limits' and the guards'
REFUSAL_CODES = {*CODES.values(), GuardrailsCode.BUDGET_EXCEEDED, GuardrailsCode.CIRCUIT_OPEN, GuardrailsCode.PAUSED}


MESSAGES = {
    "quota": "This event would exceed the period's hard limit for meter '{meter}'.",
    "spend": "This event would exceed the period's spend cap.",
    "credits": "This event costs more than the prepaid credits left.",
    "budget": "This event would exceed budget '{meter}'.",
    "run_steps": "Run '{meter}' reached its max_steps: its circuit breaker is open.",
    "run_spend": "Run '{meter}' reached its max_spend: its circuit breaker is open.",
    "run_duration": "Run '{meter}' ran past its max_duration_seconds: its circuit breaker is open.",
}


@dataclass
class Coverage:
    """The quantity a reservation's quota hold posted for the events settling it: consumed in event order,
    so only usage beyond the reservation takes quota again (their cost goes through the limits whole: the
    money holds are voided first)."""

    quantity: Decimal = Decimal(0)

    def take_quantity(self, wanted: Decimal) -> Decimal:
        taken = min(wanted, self.quantity)
        self.quantity -= taken
        return taken


@dataclass(frozen=True, slots=True)
class Guard:
    """One more bounded account an event takes from, beside its limits: a step or its cost against its run,
    its cost against a budget covering it (docs/guardrails.md)."""

    leg: str  # run_steps | run_spend | budget
    account_id: int
    code: int  # the usage transfer code
    ledger: int
    period: int  # user_data_32 of its transfers
    name: str  # the run id, or the budget id (named by the refusal)
    per_step: bool = False  # takes one unit per event, not the event's cost
    checked: bool = True  # may refuse (a breaker that is set, a blocking budget); else it only counts
    seconds: int = 0  # run_duration (code 0, takes nothing): the run's max_duration_seconds


@dataclass(slots=True)
class EventUsage:
    """What enforcement needs of one accepted-so-far event."""

    key: Any  # the caller's handle for the result
    customer_pk: int
    event_id: str
    meter: Meter
    quantity: Decimal
    usage_at: datetime
    dimensions: dict[str, str]
    coverage: Coverage | None = None
    covered_quantity: Decimal = Decimal(0)  # set by enforcement: what the reservation's hold paid for
    run_id: str = ""  # trace.run_id: the agent run it is a step of
    project_pk: int | None = None
    api_key_pk: int | None = None
    guards: tuple[Guard, ...] = ()  # set by ``prepare``: the run and budget accounts it also takes from


@dataclass
class Refusal:
    """The limits' decision to refuse an event or a reservation, and what remains of the refused limit."""

    code: GuardrailsCode  # quota_exceeded | spend_cap_exceeded | insufficient_credits | budget_exceeded | circuit_open
    message: str
    remaining: Decimal | None = None
    unit: str = ""
    budget: str = ""  # the budget that refused (budget_exceeded)
    run_id: str = ""  # the run whose breaker refused (circuit_open), and which breaker
    breaker: str = ""

    def as_error(self) -> DomainError:
        """The refusal's answer: its code and message, with ``remaining`` and ``unit`` beside them."""
        extra: dict[str, Any] | None = ({"remaining": str(self.remaining), "unit": self.unit}
                                        if self.remaining is not None else None)
        if self.budget:
            extra = {**(extra or {}), "budget": self.budget}
        if self.run_id:
            extra = {**(extra or {}), "run_id": self.run_id, "breaker": self.breaker}
        return DomainError(self.code, self.message, extra=extra)


QUOTA, SPEND, CREDITS, COUNTER, UNIQUE = (int(TransferCode.USAGE_QUOTA), int(TransferCode.USAGE_SPEND),
                                          int(TransferCode.USAGE_CREDITS), int(TransferCode.USAGE_COUNTER),
                                          int(TransferCode.USAGE_UNIQUE))


RUN_STEPS, RUN_SPEND, BUDGET = (int(TransferCode.USAGE_RUN_STEPS), int(TransferCode.USAGE_RUN_SPEND),
                              int(TransferCode.USAGE_BUDGET))


# The operator account on the other side of each usage code (credits: the customer's credits-consumed account)
OPERATOR_OF = {int(TransferCode.USAGE_RUN_STEPS): AccountCode.OPERATOR_RUNS,
               int(TransferCode.USAGE_RUN_SPEND): AccountCode.OPERATOR_RUNS,
               int(TransferCode.USAGE_BUDGET): AccountCode.OPERATOR_BUDGETS,
               int(TransferCode.USAGE_QUOTA): AccountCode.OPERATOR_QUOTA,
               int(TransferCode.USAGE_SPEND): AccountCode.OPERATOR_SPEND,
               int(TransferCode.USAGE_COUNTER): AccountCode.OPERATOR_COUNTER,
               int(TransferCode.USAGE_UNIQUE): AccountCode.OPERATOR_QUOTA}


# A batch whose net on a money account is negative gives it back with the refund code
REFUND_OF = {int(TransferCode.USAGE_RUN_SPEND): int(TransferCode.USAGE_RUN_SPEND_REFUND),
             int(TransferCode.USAGE_BUDGET): int(TransferCode.USAGE_BUDGET_REFUND),
             int(TransferCode.USAGE_SPEND): int(TransferCode.USAGE_SPEND_REFUND),
             int(TransferCode.USAGE_CREDITS): int(TransferCode.USAGE_CREDITS_REFUND)}


def refusal(leg: str, meter_key: str, available: int, unit: str) -> Refusal:
    """The 402 body of a refused leg: what is left on its account (after the batch). ``meter_key`` names
    the meter, or for a guard leg the budget or the run."""
    available = max(available, 0)
    if leg in BREAKERS:
        return Refusal(CODES[leg], MESSAGES[leg].format(meter=meter_key), run_id=meter_key, breaker=BREAKERS[leg])
    remaining = acc.units_to_qty(available) if leg == "quota" else acc.units_to_money(available)
    return Refusal(CODES[leg], MESSAGES[leg].format(meter=meter_key),
                   Decimal(format(remaining.normalize(), "f")) if remaining else Decimal(0), unit,
                   budget=meter_key if leg == "budget" else "")
