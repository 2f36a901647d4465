"""Usage's error codes (statuses: ``portal.errors.STATUS``)."""

from __future__ import annotations

from billing.common.errors import ErrorCode


class UsageCode(ErrorCode):
    UNKNOWN_ORIGINAL = "unknown_original"
    ORIGINAL_NOT_BILLABLE = "original_not_billable"
    CORRECTION_NOT_SUPPORTED = "correction_not_supported"
    CORRECTION_EXCEEDS_ORIGINAL = "correction_exceeds_original"  # would take the corrected quantity below zero
    ROLLUPS_DRIFT = "rollups_drift"  # a rollup row names a dimension set that is not stored
