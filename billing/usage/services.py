"""Ingest's public entry points; the pipeline itself is ``billing.usage.ingest``."""

from billing.usage.ingest import ACCEPTED, DUPLICATE, REJECTED, IngestResult, events_ingest, meters_cached

__all__ = ["ACCEPTED", "DUPLICATE", "REJECTED", "IngestResult", "events_ingest", "meters_cached"]
