"""Ledgers and codes. Append-only: a number, once used, keeps its meaning for ever."""

from __future__ import annotations

import enum

# Ledgers: one per currency (ISO 4217 numeric code) and one per metered unit (UNIT_LEDGER_BASE + meter pk).
CURRENCY_LEDGERS: dict[str, int] = {
    "USD": 840, "EUR": 978, "GBP": 826, "CHF": 756, "CAD": 124, "AUD": 36, "NZD": 554, "SEK": 752, "NOK": 578,
    "DKK": 208, "PLN": 985, "CZK": 203, "INR": 356, "BRL": 986, "MXN": 484, "SGD": 702, "HKD": 344, "CNY": 156,
    "ZAR": 710, "JPY": 392, "KRW": 410, "CLP": 152, "VND": 704, "ISK": 352, "BHD": 48, "KWD": 414, "JOD": 400,
    "OMR": 512, "TND": 788,
}
UNIT_LEDGER_BASE = 1_000_000
RUN_LEDGER = 999_000  # agent-run steps (one unit a step)


def currency_ledger(currency: str) -> int:
    return CURRENCY_LEDGERS[currency]


def unit_ledger(meter_pk: int) -> int:
    return UNIT_LEDGER_BASE + meter_pk


class AccountCode(enum.IntEnum):
    CREDIT_WALLET = 1  # customer: prepaid credits (money); bounded by its credits
    QUOTA = 2  # customer: one meter's hard limit for one period (units); bounded
    SPEND_CAP = 3  # customer: the period's spend cap (money); bounded
    USAGE_COUNTER = 4  # customer: a charge's cumulative quantity this period (units), for marginal pricing
    CREDITS_CONSUMED = 5  # customer: prepaid credits the period's usage consumed (money; credited by usage, net of credit-backs)
    UNIQUE_VALUE = 6  # customer: one value of a unique_count meter's dimension in one period (units); bounded to one
    RUN_STEPS = 7  # customer: one agent run's steps (RUN_LEDGER, one unit a step); bounded by max_steps when set
    RUN_SPEND = 8  # customer: one agent run's spend (money); bounded by max_spend when set
    BUDGET = 9  # customer: one budget's spend in one of its periods (money); bounded when the budget blocks
    OPERATOR_GRANTS = 101  # operator: source of credit grants and top-ups
    OPERATOR_REVENUE = 102  # operator: usage paid from credits, until CREDITS_CONSUMED took its place (no longer credited)
    OPERATOR_QUOTA = 103  # operator: source of quota allocations, sink of quota usage (per unit ledger)
    OPERATOR_SPEND = 104  # operator: source of spend-cap allocations, sink of capped spend
    OPERATOR_COUNTER = 105  # operator: the other side of usage counters
    OPERATOR_RUNS = 106  # operator: source of run allocations, sink of run steps and spend
    OPERATOR_BUDGETS = 107  # operator: source of budget allocations, sink of budgeted spend


class TransferCode(enum.IntEnum):
    CREDIT_GRANT = 1
    QUOTA_ALLOCATION = 2
    SPEND_CAP_ALLOCATION = 3
    QUOTA_REDUCTION = 4  # a hard limit lowered mid-period: allocation taken back (as much as is left)
    SPEND_CAP_REDUCTION = 5  # a spend cap lowered mid-period, likewise
    USAGE_QUOTA = 10
    USAGE_SPEND = 11
    USAGE_CREDITS = 12
    USAGE_COUNTER = 13
    USAGE_SPEND_REFUND = 14  # an event whose marginal cost is negative (a cheaper volume tier): spend given back
    USAGE_CREDITS_REFUND = 15  # the same, credits given back to the wallet
    UNIQUE_ALLOCATION = 16  # a unique_count value's one unit, credited when the value is first seen in a period
    USAGE_UNIQUE = 17  # the value counted: its one unit taken (at most once: the account is bounded)
    USAGE_RUN_STEPS = 18  # accepted events of a run, one unit each
    USAGE_RUN_SPEND = 19  # their cost against the run's spend
    USAGE_BUDGET = 25  # their cost against a budget covering them
    USAGE_RUN_SPEND_REFUND = 26  # a batch's negative net on a run's spend (credit-backs)
    USAGE_BUDGET_REFUND = 27  # the same on a budget
    RUN_ALLOCATION = 28  # a run's max_steps or max_spend, credited when the run is first seen
    BUDGET_ALLOCATION = 29  # a budget's amount for one of its periods (follows the budget's amount)
    BUDGET_REDUCTION = 30  # a budget lowered within its period
    RUN_REDUCTION = 31  # a run limit lowered while the run goes on
    RESERVATION_QUOTA = 20
    RESERVATION_SPEND = 21
    RESERVATION_CREDITS = 22
    RESERVATION_POST = 23
    RESERVATION_VOID = 24
