"""The catalog's error codes (statuses: ``portal.errors.STATUS``)."""

from __future__ import annotations

from billing.common.errors import ErrorCode


class CatalogCode(ErrorCode):
    UNKNOWN_METER = "unknown_meter"
    UNKNOWN_PLAN = "unknown_plan"
    INVALID_CATALOG = "invalid_catalog"  # every problem of a catalog document, keyed by its path
    VERSION_IMMUTABLE = "version_immutable"  # a version at the same effective_from with another body
    METER_IMMUTABLE = "meter_immutable"  # aggregation, unit or unique_by of a meter that has events
