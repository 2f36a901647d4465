from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.invoicing.models import Invoice
from billing.invoicing.selectors import invoice_verify


class Command(BaseCommand):
    help = "invoice verify ID|--all: recompute finalized invoices from raw events and compare to the cent."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        verify = sub.add_parser("verify", help="recompute from raw events and compare")
        verify.add_argument("id", nargs="?", help="invoice id or number")
        verify.add_argument("--all", action="store_true", help="every finalized, paid, void or uncollectible invoice")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["all"] == bool(options["id"]):
            raise CommandError("give one invoice id (or number), or --all")
        qs = Invoice.objects.filter(kind=Invoice.Kind.INVOICE).exclude(status=Invoice.Status.DRAFT).order_by("pk")
        if options["id"]:
            ident = options["id"]
            qs = qs.filter(pk=int(ident)) if ident.isdigit() else qs.filter(number=ident)
            if not qs.exists():
                raise CommandError(f"no finalized invoice {ident}")
        problems, checked = [], 0
        for invoice in qs.select_related("customer", "plan").iterator(chunk_size=200):
            found = invoice_verify(invoice=invoice)
            checked += 1
            problems += found
            self.stdout.write(f"{invoice.number}: {'MISMATCH' if found else 'ok'}")
        for line in problems:
            self.stdout.write(line)
        if problems:
            raise CommandError(f"{len(problems)} difference(s) in {checked} invoice(s)")
        self.stdout.write(f"{checked} invoice(s) match their raw events to the cent")
