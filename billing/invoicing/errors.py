"""Invoicing's error codes (statuses: ``portal.errors.STATUS``)."""

from __future__ import annotations

from billing.common.errors import ErrorCode


class InvoicingCode(ErrorCode):
    NO_SUBSCRIPTION = "no_subscription"
    PERIOD_OPEN = "period_open"  # finalizing before the period's end plus grace
    INVALID_INVOICE_STATE = "invalid_invoice_state"
