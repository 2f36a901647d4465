"""The customers' error codes (statuses: ``portal.errors.STATUS``)."""

from __future__ import annotations

from billing.common.errors import ErrorCode


class CustomersCode(ErrorCode):
    UNKNOWN_CUSTOMER = "unknown_customer"
    UNKNOWN_PROJECT = "unknown_project"
    CUSTOMER_FORBIDDEN = "customer_forbidden"  # a key restricted to another customer writes for this one
