"""Payments' error codes (statuses: ``portal.errors.STATUS``)."""

from __future__ import annotations

from billing.common.errors import ErrorCode


class PaymentsCode(ErrorCode):
    INVALID_SIGNATURE = "invalid_signature"  # a Stripe webhook whose signature does not verify
