"""Step 2 of ingest: each clean event's customer, meter, project and correction target, read once per
batch, into a ``Row`` (or the event's 403/422)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from billing.catalog.errors import CatalogCode
from billing.catalog.models import Meter
from billing.common import process_caches
from billing.common.auth import Principal
from billing.common.calendar import EPOCH
from billing.common.errors import CommonCode, DomainError
from billing.customers.errors import CustomersCode
from billing.customers.models import Project
from billing.guardrails.limits import SubscribedPlans
from billing.usage.contract import CleanEvent, fingerprint
from billing.usage.errors import UsageCode
from billing.usage.ingest.rows import Row
from billing.usage.models import EventKey, UsageEvent


def _nothing_closed() -> datetime:
    return EPOCH


# The instant before which periods are closed to ingest (422 period_closed). Invoicing closes periods and
# sits above usage, so it plugs its reader in at start (billing.invoicing.apps): usage never imports it.
closed_until_source: Callable[[], datetime] = _nothing_closed


@dataclass(slots=True)
class Cust:
    pk: int
    subscribed: bool  # has any subscription: only then can a plan limit apply
    guard_revision: int = 0  # its guard state's revision (billing.guardrails.guards): 0 when it never had one


@dataclass
class Lookups:
    customers: dict[str, Cust] = field(default_factory=dict)
    meters: dict[str, Meter] = field(default_factory=dict)
    projects: dict[tuple[int, str], int] = field(default_factory=dict)
    originals: dict[tuple[int, str], tuple[int, datetime, bool]] = field(default_factory=dict)  # meter, usage_at, billable
    # an original's corrected quantity (itself and its billable corrections), lowered by this batch's
    # negative corrections as they are resolved, and the ids of its stored corrections (a retry is no new one)
    corrected: dict[tuple[int, str], Decimal] = field(default_factory=dict)
    corrections: dict[tuple[int, str], set[str]] = field(default_factory=dict)
    closed_until: datetime = EPOCH  # usage before this instant belongs to a closed period
    subscribed: SubscribedPlans | None = None  # the customers' subscriptions and rate cards, read with them


METERS: dict[str, Meter] = process_caches.register("billing.usage.ingest.resolve.METERS", {})


def meters_cached(keys: set[str]) -> dict[str, Meter]:
    """Meters by key, kept in process once seen: a meter is never deleted (events protect it) and its
    key and aggregation never change, so a cached meter cannot be stale in any way ingest relies on.
    Unknown keys are always asked of the database, so a new meter is usable at once."""
    missing = keys - METERS.keys()
    if missing:
        for meter in Meter.objects.filter(key__in=missing):
            METERS[meter.key] = meter
    return {key: METERS[key] for key in keys if key in METERS}


def load_lookups(cleaned: list[tuple[int, CleanEvent]]) -> Lookups:
    lookups = Lookups()
    if not cleaned:
        return lookups
    lookups.closed_until = closed_until_source()
    customer_ids = {e.customer for _, e in cleaned}
    # One round trip for the customers, whether each has a subscription (only then can a limit apply),
    # and the subscribed plans the limits are read from (the ingest hot path).
    customers, lookups.subscribed = SubscribedPlans.of_customers(customer_ids)
    lookups.customers = {external_id: Cust(pk, subscribed, revision)
                         for external_id, (pk, subscribed, revision) in customers.items()}
    lookups.meters = meters_cached({e.meter for _, e in cleaned})
    project_keys = {e.project for _, e in cleaned if e.project}
    if project_keys:
        for pk, customer_pk, key in Project.objects.filter(
            key__in=project_keys, customer__external_id__in=customer_ids
        ).values_list("pk", "customer_id", "key"):
            lookups.projects[(customer_pk, key)] = pk
    originals = {e.corrects for _, e in cleaned if e.corrects}
    if originals:
        _load_originals(lookups, originals, customer_ids)
    return lookups


def _load_originals(lookups: Lookups, originals: set[str], customer_ids: set[str]) -> None:
    """The originals the batch's corrections name, and the corrections already stored of each. The
    originals are found by their keys, which lead to their rows (id and usage_at: the partition); a
    correction counts at or after its original's usage time, so only those partitions are read for them."""
    keys = list(EventKey.objects.filter(event_id__in=originals, customer__external_id__in=customer_ids)
                .values_list("event", "usage_at"))
    if not keys:
        return
    for customer_pk, event_id, meter_pk, usage_at, billable, quantity in UsageEvent.objects.filter(
        id__in=[event for event, _ in keys], usage_at__in={at for _, at in keys}
    ).values_list("customer_id", "event_id", "meter_id", "usage_at", "billable", "quantity"):
        lookups.originals[(customer_pk, event_id)] = (meter_pk, usage_at, billable)
        lookups.corrected[(customer_pk, event_id)] = quantity
    for customer_pk, event_id, corrects, quantity, billable in UsageEvent.objects.filter(
        corrects__in=originals, customer__external_id__in=customer_ids, usage_at__gte=min(at for _, at in keys)
    ).values_list("customer_id", "event_id", "corrects", "quantity", "billable"):
        lookups.corrections.setdefault((customer_pk, corrects), set()).add(event_id)
        if billable and (customer_pk, corrects) in lookups.corrected:
            lookups.corrected[(customer_pk, corrects)] += quantity


def _bounded(event: CleanEvent, quantity: Decimal, customer_pk: int, lookups: Lookups,
             in_batch: dict[tuple[int, str], Row]) -> None:
    """A negative correction may not take its original's corrected quantity below zero. A correction stored
    before (a retry) is not checked again: it is a duplicate. Positive corrections of the batch do not
    raise the bound until stored (one may yet be refused by a limit)."""
    key = (customer_pk, event.corrects or "")
    if quantity >= 0 or event.event_id in lookups.corrections.get(key, ()):
        return
    corrected = lookups.corrected.get(key)
    if corrected is None:  # the original is earlier in this batch
        corrected = in_batch[key].quantity
    if corrected + quantity < 0:
        raise DomainError(UsageCode.CORRECTION_EXCEEDS_ORIGINAL,
                          f"This correction would take event '{event.corrects}' below zero: {corrected} is left to "
                          "correct.", {"quantity": [f"At least -{corrected}."]})
    lookups.corrected[key] = corrected + quantity


def resolve_event(
    event: CleanEvent, index: int, principal: Principal, lookups: Lookups, in_batch: dict[tuple[int, str], Row]
) -> Row:
    customer = lookups.customers.get(event.customer)
    if principal.customer_id is not None and (customer is None or customer.pk != principal.customer_id):
        # Same answer whether or not that customer exists: nothing about other tenants leaks.
        raise DomainError(CustomersCode.CUSTOMER_FORBIDDEN, "This key is restricted to another customer.")
    if customer is None:
        raise DomainError(CustomersCode.UNKNOWN_CUSTOMER, f"No customer '{event.customer}'.",
                          {"customer": ["Unknown customer."]})
    meter = lookups.meters.get(event.meter)
    if meter is None:
        raise DomainError(CatalogCode.UNKNOWN_METER, f"No meter '{event.meter}'.", {"meter": ["Unknown meter."]})
    project_pk = None
    if event.project is not None:
        project_pk = lookups.projects.get((customer.pk, event.project))
        if project_pk is None:
            raise DomainError(CustomersCode.UNKNOWN_PROJECT,
                              f"Customer '{event.customer}' has no project '{event.project}'.", {"project": ["Unknown project."]})
    quantity = event.quantity
    if quantity is None:
        if meter.aggregation != Meter.Aggregation.COUNT:
            raise DomainError(CommonCode.VALIDATION_ERROR, "The event is not valid.",
                              {"quantity": ["Required (only count meters default to 1)."]})
        quantity = Decimal(1)
    usage_at = event.timestamp
    if event.corrects is not None:
        if not meter.correctable:
            raise DomainError(UsageCode.CORRECTION_NOT_SUPPORTED,
                             f"Meter '{meter.key}' aggregates '{meter.aggregation}': only sum and count meters take corrections.")
        original = lookups.originals.get((customer.pk, event.corrects))
        if original is None and (customer.pk, event.corrects) in in_batch:
            earlier = in_batch[(customer.pk, event.corrects)]
            original = (earlier.meter_pk, earlier.usage_at, earlier.billable)
        if original is None or original[0] != meter.pk:
            raise DomainError(UsageCode.UNKNOWN_ORIGINAL,
                              f"No event '{event.corrects}' of this customer and meter to correct.",
                              {"corrects": ["Unknown event."]})
        if not original[2]:
            # a refused or non-billable event never counted: correcting it would lower real usage
            raise DomainError(UsageCode.ORIGINAL_NOT_BILLABLE,
                              f"Event '{event.corrects}' is not billable (or was refused); there is nothing to correct.",
                              {"corrects": ["The original is not billable."]})
        usage_at = original[1]
    reason, late = event.reason, False
    if usage_at < lookups.closed_until:
        if event.corrects is not None and event.timestamp >= lookups.closed_until:
            # the original's period is closed (its invoice final): book the correction on the open period
            usage_at, reason = event.timestamp, "adjustment"
        else:
            late = True
    if event.corrects is not None and not late:  # a late one is answered as such (period_closed)
        _bounded(event, quantity, customer.pk, lookups, in_batch)
    return Row(
        index=index,
        event=event,
        customer_pk=customer.pk,
        project_pk=project_pk,
        meter_pk=meter.pk,
        quantity=quantity,
        usage_at=usage_at,
        run_id=(event.trace or {}).get("run_id") or "",
        fingerprint=fingerprint(event, quantity),
        billable=event.billable,
        reason=reason,
        meter=meter,
        late=late,
        api_key_pk=principal.api_key_id,
    )
