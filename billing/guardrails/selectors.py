from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from billing.catalog.models import Meter
from billing.catalog.money import MINOR_UNITS
from billing.catalog.selectors import subscription_at, version_in_effect
from billing.common.fields import decimal_to_text
from billing.customers.models import Customer
from billing.guardrails import accounts as acc
from billing.guardrails.models import CreditGrant
from ledger.backends import get_ledger


def _q(units: int) -> str:
    return decimal_to_text(acc.units_to_qty(units))


def _m(units: int) -> str:
    return decimal_to_text(acc.units_to_money(units))


def customer_balance(*, customer: Customer, now: datetime) -> dict[str, Any]:
    """Credits per currency (posted, pending, available) and, for the open period, each limited meter's
    limit, used, reserved, remaining and soft limit, and the spend cap."""
    ledger = get_ledger()
    ids = acc.Ids(customer.pk)
    currencies = set(CreditGrant.objects.filter(customer=customer).values_list("currency", flat=True))
    subscription = subscription_at(customer=customer, at=now)
    version = version_in_effect(plan=subscription.plan, at=now) if subscription else None
    if subscription:
        currencies.add(subscription.plan.currency)
    period = acc.period_key(now)
    definition = version.definition if version else {}
    meters = {m.key: m for m in Meter.objects.filter(key__in=[lim["meter"] for lim in definition.get("limits", [])])}
    wanted = [ids.wallet(c) for c in currencies if c in MINOR_UNITS]
    wanted += [ids.quota(m.pk, period) for m in meters.values()]
    if subscription and definition.get("spend_cap"):
        wanted.append(ids.spend(subscription.plan.currency, period))
    found = ledger.lookup_accounts(wanted)
    credits = []
    for currency in sorted(currencies):
        wallet = found.get(ids.wallet(currency))
        posted = wallet.balance if wallet else 0
        pending = wallet.debits_pending if wallet else 0
        credits.append({"currency": currency, "posted": _m(posted), "pending": _m(pending), "available": _m(posted - pending)})
    quotas = []
    for limit in definition.get("limits", []):
        meter = meters.get(limit["meter"])
        if meter is None or limit.get("hard") is None:
            continue
        hard = Decimal(limit["hard"])
        account = found.get(ids.quota(meter.pk, period))
        # used = the allocation less what the account still holds (refunds of refused settlements credit it back)
        used = max(acc.qty_units(hard) - account.balance, 0) if account else 0
        reserved = account.debits_pending if account else 0
        soft = limit.get("soft")
        soft_abs = hard * Decimal(soft[:-1]) / 100 if isinstance(soft, str) and soft.endswith("%") else (
            Decimal(soft) if soft else None)
        remaining = max(hard - acc.units_to_qty(used + reserved), Decimal(0))
        quotas.append({"meter": meter.key, "unit": meter.unit, "limit": decimal_to_text(hard), "used": _q(used),
                       "reserved": _q(reserved), "remaining": decimal_to_text(remaining),
                       "soft_limit": decimal_to_text(soft_abs) if soft_abs is not None else None})
    spend = None
    if subscription and definition.get("spend_cap"):
        cap = Decimal(definition["spend_cap"])
        account = found.get(ids.spend(subscription.plan.currency, period))
        spent = account.debits_posted if account else 0
        reserved = account.debits_pending if account else 0
        left = max(cap - acc.units_to_money(spent + reserved), Decimal(0))
        spend = {"currency": subscription.plan.currency, "cap": decimal_to_text(cap), "spent": _m(spent),
                 "reserved": _m(reserved), "remaining": decimal_to_text(left)}
    return {"customer": customer.external_id, "period": period, "credits": credits, "quotas": quotas, "spend_cap": spend}
