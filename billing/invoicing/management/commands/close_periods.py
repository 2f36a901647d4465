from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from billing.common.cli import now_option
from billing.invoicing.services import periods_close, periods_finalize
from billing.usage.rollups import rollup_until_current


class Command(BaseCommand):
    help = ("Close every period whose end plus grace has passed and finalize its invoices. Without --now, waits "
            "out the finalize delay after a fresh close so in-flight events are in the invoices.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--now", help="act as if it were this instant (RFC 3339), e.g. 2026-12-01T01:00:00Z")

    def handle(self, *args: Any, **options: Any) -> None:
        now = now_option(options["now"], "2026-12-01T01:00:00Z")
        closed = periods_close(now=now)
        for start, end in closed:
            self.stdout.write(f"closed {start:%Y-%m} [{start.isoformat()}, {end.isoformat()})")
        if closed and not options["now"]:
            delay = settings.TOLLGATE_FINALIZE_DELAY_SECONDS
            self.stdout.write(f"waiting {delay} s for requests already past the period check to commit")
            time.sleep(delay)
            now = timezone.now()
        elif options["now"]:  # by hand at a given instant: finalize what that instant closed, without waiting
            now += timedelta(seconds=settings.TOLLGATE_FINALIZE_DELAY_SECONDS)
        rollup_until_current(now=timezone.now())
        invoices = periods_finalize(now=now)
        for invoice in invoices:
            self.stdout.write(f"finalized {invoice.number} {invoice.customer.external_id} {invoice.period_start:%Y-%m} "
                              f"total {invoice.total_minor} {invoice.currency} minor")
        if not closed and not invoices:
            self.stdout.write("nothing to close or finalize")
