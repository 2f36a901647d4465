from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.catalog.schema import CatalogError
from billing.catalog.selectors import catalog_export
from billing.catalog.services import catalog_import


class Command(BaseCommand):
    help = "Import or export the catalog (meters, plans, rate-card versions) as YAML or JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        imp = sub.add_parser("import", help="validate the whole file, then apply it; any error changes nothing")
        imp.add_argument("file", help="path to a .yaml/.yml/.json file, or - for standard input")
        imp.add_argument("--actor", default="", help="name recorded in the audit trail (default: the OS user)")
        exp = sub.add_parser("export", help="write the catalog; importing it again changes nothing")
        exp.add_argument("--format", choices=["yaml", "json"], default="yaml")
        exp.add_argument("--output", "-o", help="file to write (default: standard output)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "import":
            path = options["file"]
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
            fmt = "json" if path.endswith(".json") else None
            try:
                counts = catalog_import(text=text, actor=options["actor"] or f"cli:{getpass.getuser()}", fmt=fmt)
            except CatalogError as exc:
                raise CommandError("catalog not imported, nothing changed:\n" + "\n".join(
                    f"  {where or '(file)'}: {message}" for where, message in exc.problems)) from None
            self.stdout.write(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()))
            return
        data = catalog_export()
        if options["format"] == "json":
            text = json.dumps(data, indent=2) + "\n"
        else:
            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        if options.get("output"):
            Path(options["output"]).write_text(text)
        else:
            self.stdout.write(text, ending="")
