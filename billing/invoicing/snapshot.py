"""What every customer's bill for one period shares, read once for a batch of them.

The beat refreshes every draft of an open period every few minutes. Read customer by customer, the
meters, the plans' rate-card versions, the customer's subscriptions and the period's stored invoice cost
a query each per customer (most of a refresh's time is the ORM building queries, not the database
answering them); a ``PeriodSnapshot`` reads each of them once for the whole batch, in four queries.

A snapshot is as of when it was read: a subscription or a rate-card version changed during the batch
reaches a draft at the next refresh. It is for drafts only: finalization reads everything afresh, in the
transaction that freezes the invoice. A stored invoice in the snapshot only spares the refresh a lookup
when nothing changed; whatever it writes, it writes under the invoice's row lock, after checking again.
The period's credits-consumed accounts (docs/ledger.md) are read with the wallets, for every customer in
one ledger lookup (batches of ``LOOKUP_BATCH``): what an invoice deducts for prepaid credits is their
balance, as of the snapshot (usage ingested during the batch reaches the draft at the next refresh).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Q

from billing.catalog.models import Meter, RateCardVersion, Subscription
from billing.common.calendar import period_key
from billing.customers.models import Customer
from billing.invoicing.models import Invoice


@dataclass
class PeriodSnapshot:
    start: datetime
    end: datetime
    customers: list[Customer]  # every customer with a subscription overlapping the period, by pk
    meters: dict[int, Meter]  # by pk
    subscriptions: dict[int, list[Subscription]]  # by customer pk: those overlapping the period, oldest first
    versions: dict[int, list[RateCardVersion]]  # by plan pk: every version, oldest first
    invoices: dict[int, Invoice]  # by customer pk: the period's invoice (not credit notes)
    wallets: set[int]  # the ledger ids of the customers' prepaid-credit wallets that exist
    consumed: dict[int, int]  # the period's credits-consumed accounts that exist: id -> credits consumed (units)


def period_snapshot(*, start: datetime, end: datetime) -> PeriodSnapshot:
    """The shared reads for the bills of [start, end), for every customer subscribed during it."""
    subscriptions: dict[int, list[Subscription]] = defaultdict(list)
    for subscription in (Subscription.objects.select_related("plan")
                         .filter(Q(end__isnull=True) | Q(end__gt=start), start__lt=end).order_by("customer_id", "start")):
        subscriptions[subscription.customer_id].append(subscription)
    versions: dict[int, list[RateCardVersion]] = defaultdict(list)
    plans = {s.plan_id for subs in subscriptions.values() for s in subs}
    for version in RateCardVersion.objects.filter(plan_id__in=plans).order_by("effective_from", "pk"):
        versions[version.plan_id].append(version)
    customers = list(Customer.objects.filter(pk__in=list(subscriptions)).order_by("pk"))
    invoices = {invoice.customer_id: invoice for invoice in
                Invoice.objects.filter(period_start=start, kind=Invoice.Kind.INVOICE, customer_id__in=list(subscriptions))}
    meters = {meter.pk: meter for meter in Meter.objects.all()}
    wallets, consumed = _ledger_reads(subscriptions, start)
    return PeriodSnapshot(start, end, customers, meters, dict(subscriptions), dict(versions), invoices, wallets, consumed)


def _ledger_reads(subscriptions: dict[int, list[Subscription]], start: datetime) -> tuple[set[int], dict[int, int]]:
    """The customers' wallets that exist, and the period's credits-consumed balances, in one lookup."""
    from billing.guardrails import accounts
    from ledger.backends import get_ledger

    period = period_key(start + timedelta(days=1))  # as credits_consumed
    wallet_ids, consumed_ids = set(), set()
    for customer, subs in subscriptions.items():
        ids = accounts.Ids(customer)
        for s in subs:
            wallet_ids.add(ids.wallet(s.plan.currency))
            consumed_ids.add(ids.consumed(s.plan.currency, period))
    wanted = sorted(wallet_ids | consumed_ids)
    ledger, found = get_ledger(), {}
    for at in range(0, len(wanted), LOOKUP_BATCH):
        found.update(ledger.lookup_accounts(wanted[at:at + LOOKUP_BATCH]))
    return ({i for i in found if i in wallet_ids},
            {i: accounts.consumed_balance(a) for i, a in found.items() if i in consumed_ids})


LOOKUP_BATCH = 8000  # accounts per lookup (TigerBeetle takes at most 8189 per request)
