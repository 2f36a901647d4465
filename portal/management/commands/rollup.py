from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from billing.invoicing.services import drafts_refresh
from billing.usage.rollups import rollup_check, rollup_full, rollup_until_current


class Command(BaseCommand):
    """The rollups (usage), then the drafts they feed (invoicing): here, above both apps."""

    help = "Run the hourly rollup now (--full: rebuild from raw events; --check: report drift)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--full", action="store_true", help="recompute every rollup from the raw events")
        parser.add_argument("--check", action="store_true", help="compare rollups with a recomputation; exit 1 on drift")

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        if options["full"]:
            self.stdout.write(f"rebuilt from {rollup_full(now=now)} events")
        elif not options["check"]:
            self.stdout.write(f"rolled up {rollup_until_current(now=now)} events")
        if not options["check"]:
            self.stdout.write(f"refreshed {drafts_refresh(now=now)} draft invoice(s) of the open period(s)")
        if options["check"]:
            drift = rollup_check()
            for line in drift:
                self.stdout.write(line)
            if drift:
                raise CommandError(f"{len(drift)} rollup(s) differ from the raw events")
            self.stdout.write("rollups match the raw events")
