from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.customers.models import ApiKey, Customer
from billing.customers.services import api_key_create, api_key_revoke


class Command(BaseCommand):
    help = "Create, list or revoke API keys. The key itself is printed once, at creation."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a key and print it once")
        create.add_argument("--name", required=True)
        create.add_argument("--scope", required=True, choices=ApiKey.Scope.values)
        create.add_argument("--customer", help="restrict the key to this customer id")
        sub.add_parser("list", help="list keys (prefixes only)")
        revoke = sub.add_parser("revoke", help="revoke a key by its prefix")
        revoke.add_argument("prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            customer = None
            if options.get("customer"):
                customer = Customer.objects.filter(external_id=options["customer"]).first()
                if customer is None:
                    raise CommandError(f"No customer '{options['customer']}'.")
            _, raw = api_key_create(name=options["name"], scope=options["scope"], customer=customer,
                                    actor="system:apikey")
            self.stdout.write(raw)
        elif action == "list":
            for key in ApiKey.objects.select_related("customer"):
                state = "revoked" if key.revoked_at else "active"
                self.stdout.write(f"tg_{key.prefix}_…  {key.scope:7} {state:8} {key.customer or '-'!s:20} {key.name}")
        else:
            prefix = options["prefix"].removeprefix("tg_").split("_", 1)[0]  # accepts what `list` prints
            found = ApiKey.objects.filter(prefix=prefix).first()
            if found is None:
                raise CommandError(f"No key with prefix '{options['prefix']}'.")
            api_key_revoke(key=found, actor="system:apikey")
            self.stdout.write(f"revoked tg_{found.prefix}_…")
