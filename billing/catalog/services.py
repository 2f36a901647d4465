from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max

from billing.audit.models import AuditEntry
from billing.audit.services import audit_created, audit_deleted, audit_record, snapshot
from billing.catalog import money, schema
from billing.catalog.errors import CatalogCode
from billing.catalog.models import Meter, Plan, RateCardVersion, Subscription
from billing.common.calendar import EPOCH, next_period_start, period_bounds
from billing.common.errors import CommonCode, DomainError, validation_error


def meter_create(*, key: str, name: str, aggregation: str, unit: str = "unit", unique_by: str = "") -> tuple[Meter, bool]:
    """Create a meter. The same definition again returns the existing one (created=False): a
    retried POST is harmless. A different definition under an existing key is a 409: a meter's
    aggregation cannot change under events already recorded."""
    meter = Meter(key=key, name=name or key, aggregation=aggregation, unit=unit or "unit", unique_by=unique_by or "")
    meter.full_clean(validate_unique=False, validate_constraints=False)
    if aggregation == Meter.Aggregation.UNIQUE_COUNT and not unique_by:
        raise validation_error({"unique_by": ["Required for unique_count."]}, "unique_count needs unique_by.")
    existing = Meter.objects.filter(key=key).first()
    if existing is not None:
        return _same_or_conflict(existing, meter), False
    try:
        with transaction.atomic():
            meter.save()
            audit_created(meter)
    except IntegrityError:
        return _same_or_conflict(Meter.objects.get(key=key), meter), False
    return meter, True


# Whether a meter has usage events. Usage records them and sits above the catalog, so it plugs its reader
# in at start (billing.usage.apps); until then no meter has any.
def _no_events(meter_pk: int) -> bool:
    return False


meter_events_source: Callable[[int], bool] = _no_events
# What events were aggregated with: fixed once a meter has any (a change would reprice billed history).
METER_FROZEN = ("aggregation", "unit", "unique_by")


def meter_frozen_fields(*, meter: Meter) -> tuple[str, ...]:
    """The fields of ``meter`` that can no longer change (none while it has no events)."""
    return METER_FROZEN if meter.pk and meter_events_source(meter.pk) else ()


@transaction.atomic
def meter_update(*, meter: Meter, data: dict[str, Any], actor: str = "") -> Meter:
    """Rename a meter, or redefine one that has no events yet. Once it has events its aggregation, unit
    and unique_by are history: a different definition is a new meter."""
    meter = Meter.objects.select_for_update().get(pk=meter.pk)
    before = snapshot(meter)
    changed = {name: value for name, value in data.items() if name in ("name", *METER_FROZEN)
               and getattr(meter, name) != value}
    frozen = sorted(set(changed) & set(meter_frozen_fields(meter=meter)))
    if frozen:
        raise DomainError(CatalogCode.METER_IMMUTABLE,
                          f"Meter '{meter.key}' has usage events: its {', '.join(frozen)} cannot change. "
                          "Create a new meter for the new definition.", {name: ["Fixed once the meter has events."]
                                                                          for name in frozen})
    if not changed:
        return meter
    for name, value in changed.items():
        setattr(meter, name, value)
    try:
        meter.full_clean(validate_unique=False)
    except ValidationError as error:
        raise validation_error(error.message_dict, "The meter is not valid.") from None
    meter.save(update_fields=list(changed))
    audit_record(action="meter.updated", obj=meter, before=before, after=snapshot(meter), actor=actor)
    return meter


def _same_or_conflict(existing: Meter, wanted: Meter) -> Meter:
    fields = ("name", "aggregation", "unit", "unique_by")
    if all(getattr(existing, f) == getattr(wanted, f) for f in fields):
        return existing
    raise DomainError(CommonCode.ALREADY_EXISTS, f"Meter '{existing.key}' exists with another definition.")


def audit(*, actor: str, action: str, target: str, data: dict[str, Any] | None = None) -> AuditEntry:
    """The older call shape: ``target`` ``type:id`` names the object and ``data`` is its state after."""
    object_type, _, object_id = target.partition(":")
    return audit_record(action=action, object_type=object_type, object_id=object_id, after=data, actor=actor)


# --- catalog file -----------------------------------------------------------------------------------

def _check_meters(catalog: schema.CatalogIn, problems: list[tuple[str, str]]) -> set[str]:
    existing = {m.key: m for m in Meter.objects.all()}
    keys = set(existing)
    for index, meter in enumerate(catalog.meters):
        at = f"meters[{index}]"
        if meter.aggregation not in Meter.Aggregation.values:
            problems.append((f"{at}.aggregation", f"must be one of {', '.join(Meter.Aggregation.values)}"))
        if meter.aggregation == "unique_count" and not meter.unique_by:
            problems.append((f"{at}.unique_by", "required for unique_count"))
        old = existing.get(meter.key)
        if old is not None and (old.aggregation, old.unique_by) != (meter.aggregation, meter.unique_by):
            problems.append((f"{at}.aggregation", f"meter '{meter.key}' exists with aggregation '{old.aggregation}'"))
        keys.add(meter.key)
    return keys


def _plan_problems(entry: schema.PlanIn, path: str, definition: dict[str, Any], problems: list[tuple[str, str]]) -> None:
    plan = Plan.objects.filter(key=entry.key).first()
    if plan is None:
        return
    if plan.currency != entry.currency:
        problems.append((f"{path}.currency", f"plan '{entry.key}' is billed in {plan.currency}; its currency cannot change"))
    same_time = plan.versions.filter(effective_from=schema.effective_from_utc(entry)).first()
    if same_time is not None and schema.canonical_json(same_time.definition) != schema.canonical_json(definition):
        problems.append((f"{path}.effective_from",
                         f"version {same_time.number} of '{entry.key}' takes effect then and is immutable; "
                         "publish the change with a new effective_from"))


@transaction.atomic
def catalog_import(*, text: str | bytes, actor: str, fmt: str | None = None) -> dict[str, int]:
    """Validate the whole file first, then apply it in one transaction; any error changes nothing.

    Re-importing the same file (or an export) changes nothing: meters and versions that already exist
    with the same definition are kept as they are.
    """
    catalog = schema.parse_catalog(text, fmt=fmt)
    problems: list[tuple[str, str]] = []
    meter_keys = _check_meters(catalog, problems)
    definitions = []
    seen: set[tuple[str, datetime]] = set()
    for index, entry in enumerate(catalog.plans):
        path = f"plans[{index}]"
        definition = schema.validate_plan(entry, path, meter_keys, problems)
        if entry.effective_from.tzinfo is not None:
            when = (entry.key, schema.effective_from_utc(entry))
            if when in seen:
                problems.append((f"{path}.effective_from", "two versions of this plan take effect at the same time"))
            seen.add(when)
            _plan_problems(entry, path, definition, problems)
        definitions.append(definition)
    if problems:
        raise schema.CatalogError(problems)

    counts = {"meters_created": 0, "plans_created": 0, "versions_created": 0}
    for meter in catalog.meters:
        _, created = meter_create(key=meter.key, name=meter.name, aggregation=meter.aggregation, unit=meter.unit,
                                  unique_by=meter.unique_by)
        counts["meters_created"] += created
    for entry, definition in zip(catalog.plans, definitions, strict=True):
        plan, created = _plan_get_or_create(entry, actor)
        counts["plans_created"] += created
        _, made = _version_create(plan=plan, effective_from=schema.effective_from_utc(entry), definition=definition,
                                  actor=actor)
        counts["versions_created"] += made
    if any(counts.values()):
        audit_record(actor=actor, action="catalog.imported", object_type="catalog", after=counts)
    return counts


def _plan_get_or_create(entry: schema.PlanIn, actor: str) -> tuple[Plan, bool]:
    plan, created = Plan.objects.get_or_create(
        key=entry.key, defaults={"name": entry.name, "currency": entry.currency, "interval": entry.interval})
    if created:
        audit_created(plan, actor=actor)
    elif plan.name != entry.name:
        before = snapshot(plan)
        plan.name = entry.name
        plan.save(update_fields=["name"])
        audit_record(actor=actor, action="plan.renamed", obj=plan, before=before, after=snapshot(plan))
    return plan, created


def _version_create(*, plan: Plan, effective_from: datetime, definition: dict[str, Any], actor: str
                    ) -> tuple[RateCardVersion, bool]:
    existing = plan.versions.filter(effective_from=effective_from).first()
    if existing is not None:
        if schema.canonical_json(existing.definition) != schema.canonical_json(definition):
            raise DomainError(CatalogCode.VERSION_IMMUTABLE,
                              f"Version {existing.number} of '{plan.key}' takes effect at {effective_from.isoformat()} "
                              "and cannot change; publish a new version with a later effective_from.")
        return existing, False
    number = (plan.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = RateCardVersion.objects.create(plan=plan, number=number, effective_from=effective_from,
                                             definition=definition, created_by=actor)
    audit_created(version, action="ratecard.published", actor=actor)
    return version, True


@transaction.atomic
def plan_add(*, key: str, name: str, currency: str, actor: str) -> Plan:
    """A plan without a version yet (the console's "new plan"): its first rate card is drafted and
    published afterwards. Until then no subscription can be priced on it."""
    plan = Plan(key=key, name=name, currency=currency)
    try:
        plan.full_clean(validate_unique=False)
    except ValidationError as error:
        raise validation_error(error.message_dict, "The plan is not valid.") from None
    if not money.is_currency(currency):
        raise validation_error({"currency": [f"Unknown or unsupported currency '{currency}'."]})
    if Plan.objects.filter(key=key).exists():
        raise DomainError(CommonCode.ALREADY_EXISTS, f"Plan '{key}' exists.", {"key": [f"Plan '{key}' exists."]})
    plan.save()
    audit_created(plan, actor=actor)
    return plan


@transaction.atomic
def plan_create(*, data: Any, actor: str) -> tuple[Plan, RateCardVersion, bool]:
    """POST /plans: a new plan with its first version (the same body again is harmless)."""
    entry = schema.parse_plan(data)
    problems: list[tuple[str, str]] = []
    definition = schema.validate_plan(entry, "", {m.key for m in Meter.objects.all()}, problems)
    if not problems:
        _plan_problems(entry, "", definition, problems)
    if problems:
        raise schema.CatalogError([(p.lstrip("."), m) for p, m in problems])
    plan, _ = _plan_get_or_create(entry, actor)
    version, created = _version_create(plan=plan, effective_from=schema.effective_from_utc(entry),
                                       definition=definition, actor=actor)
    return plan, version, created


@transaction.atomic
def plan_version_publish(*, plan: Plan, data: dict[str, Any], actor: str, now: datetime | None = None
                         ) -> tuple[RateCardVersion, bool]:
    """POST /plans/{key}/versions: a new rate-card version. ``effective_from`` defaults to now; a
    version cannot take effect in the past of an existing one's period already billed, so it must be
    later than the newest version in effect."""
    now = now or datetime.now(timezone.utc)
    payload = {"key": plan.key, "name": plan.name, "currency": plan.currency, "interval": plan.interval,
               "effective_from": now.isoformat(), **data}
    entry = schema.parse_plan(payload)
    problems: list[tuple[str, str]] = []
    definition = schema.validate_plan(entry, "", {m.key for m in Meter.objects.all()}, problems)
    if problems:
        raise schema.CatalogError([(p.lstrip("."), m) for p, m in problems])
    effective_from = schema.effective_from_utc(entry)
    exact = plan.versions.filter(effective_from=effective_from).first()
    if exact is None and effective_from < now.replace(microsecond=0) and plan.versions.filter(
            effective_from__gte=effective_from).exists():
        raise schema.CatalogError([("effective_from", "a newer version already exists; a change cannot be back-dated "
                                                      "before it")])
    return _version_create(plan=plan, effective_from=effective_from, definition=definition, actor=actor)


def _nothing_closed() -> datetime:
    return EPOCH


# The instant before which billing periods are closed and invoiced. Invoicing closes them and sits above the
# catalog, so it plugs its reader in at start (billing.invoicing.apps), as it does for ingest.
closed_until_source: Callable[[], datetime] = _nothing_closed


@transaction.atomic
def subscription_set(*, customer: Any, plan: Plan, start: datetime | None, now: datetime, actor: str) -> Subscription:
    """Put a customer on a plan. Without ``start`` the change takes effect at the next period boundary
    (the first instant of next month, UTC) when the customer already has a plan, or now when it has
    none; an explicit ``start`` (for example now) is taken as given. The subscription in effect then
    ends where the new one starts; a change that had not started yet is replaced."""
    rows = list(Subscription.objects.select_for_update().filter(customer=customer).order_by("start"))
    in_effect_now = next((r for r in rows if r.start <= now and (r.end is None or r.end > now)), None)
    if start is None:
        start = now if in_effect_now is None else next_period_start(now)
    closed_until = closed_until_source()
    if start < closed_until:  # those periods are invoiced: a start there would bill them again
        raise DomainError(CommonCode.PERIOD_CLOSED, f"Billing periods before {closed_until.isoformat()} are closed and "
                          "invoiced; a subscription cannot start in them.",
                          {"start": [f"Must be at or after {closed_until.isoformat()}."]})
    covering = next((r for r in rows if r.start < start and (r.end is None or r.end > start)), None)
    if any(r.start >= start and r.start <= now for r in rows):
        raise validation_error({"start": ["A subscription already started at or after this time; periods cannot be rewritten."]})
    if covering is not None and start < now and (covering.plan_id != plan.pk or (covering.end or now) < now):
        raise validation_error({"start": [f"The subscription in effect since {covering.start.isoformat()} cannot be ended "
                                          "in the past; a change takes effect now or later."]})
    # one invoice per period, in one currency
    if covering is not None and covering.plan.currency != plan.currency and period_bounds(start)[0] != start:
        raise validation_error({"start": [f"A change from {covering.plan.currency} to {plan.currency} takes effect at the "
                                          "start of a billing period (omit start for the next one)."]})
    for pending in (r for r in rows if r.start >= start):  # not started yet: replaced
        audit_deleted(pending, snapshot(pending), actor=actor)
        pending.delete()
    if covering is not None and covering.plan_id == plan.pk:
        _subscription_end(covering, None, actor)
        return covering
    if covering is not None:
        _subscription_end(covering, start, actor)
    subscription = Subscription.objects.create(customer=customer, plan=plan, start=start)
    audit_created(subscription, actor=actor)
    return subscription


def _subscription_end(subscription: Subscription, end: datetime | None, actor: str) -> None:
    before = snapshot(subscription)
    subscription.end = end
    subscription.save(update_fields=["end"])
    audit_record(action="subscription.ended" if end else "subscription.continued", obj=subscription, before=before,
                 after=snapshot(subscription), actor=actor)
