"""Admin building blocks shared by the apps: ``ReadOnlyAdmin``, for data that is append-only or written only
by its service (raw events, rate-card versions, the audit trail): listed and inspected, never added, changed
or deleted by hand. It is the ledger's own (the bottom layer, which cannot import billing's)."""

from __future__ import annotations

from ledger.admin import ReadOnlyAdmin

__all__ = ["ReadOnlyAdmin"]
