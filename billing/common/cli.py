"""What management commands share."""

from __future__ import annotations

from datetime import datetime

from django.core.management.base import CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime


def now_option(text: str | None, example: str) -> datetime:
    """A command's ``--now``: the instant it names (RFC 3339, with an offset), or the current time without one."""
    if not text:
        return timezone.now()
    parsed = parse_datetime(text)
    if parsed is None or parsed.tzinfo is None:
        raise CommandError(f"--now must be an RFC 3339 timestamp with an offset, e.g. {example}")
    return parsed
