"""Reserve, then settle (contract.md, "Reservations").

reserve:  the estimate is held as pending ledger transfers with a timeout (quota units, and the
          estimate's marginal cost against the spend cap and the credit wallet), one linked chain:
          it fits whole or is refused (402). Held amounts count against the limits while pending.
settle:   one ledger batch: the quota hold is posted up to the quantity actually used (the rest is
          released), the money holds are voided, then the settling events' own chains follow in the
          same batch, their quota debited only beyond what the reservation held. One batch is applied
          in order without interleaving (a TigerBeetle batch, one SQL transaction), so nothing released
          can be taken by anyone else before the events are charged.
release:  voids every hold.
expiry:   TigerBeetle releases timed-out holds itself; for the SQL backend a Celery beat sweep does
          (and every ledger write and lookup releases what is due first).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.catalog.models import Meter
from billing.common.errors import ApiError
from billing.customers.models import Customer
from billing.guardrails import accounts as acc
from billing.guardrails.limits import (
    CODES,
    MESSAGES,
    EventUsage,
    Refusal,
    Terms,
    counter_keys,
    marginal_cost,
    matching_charges,
)
from billing.guardrails.models import Reservation
from ledger.backends import get_ledger
from ledger.codes import AccountCode, TransferCode, currency_ledger, unit_ledger
from ledger.ids import derive
from ledger.types import AMOUNT_MAX, Status, Transfer, TransferFlags

MAX_TTL = 24 * 3600


@dataclass
class Hold:
    leg: str
    transfer: Transfer


def _holds(customer: Customer, meter: Meter, quantity: Decimal, dimensions: dict[str, str], reservation_id: str,
           ttl: int, now: datetime) -> tuple[list[Hold], list[Any], list[Transfer]]:
    """The pending transfers of a reservation, and the accounts/allocations they need."""
    terms = Terms([customer.pk])
    found = terms.at(customer.pk, now)
    if found is None:
        return [], [], []
    sub, version = found
    definition, currency, period = version.definition, sub.currency, acc.period_key(now)
    ids = acc.Ids(customer.pk)
    ledger = get_ledger()
    hard = next((Decimal(lim["hard"]) for lim in definition.get("limits", [])
                 if lim["meter"] == meter.key and lim.get("hard") is not None), None)
    cap = Decimal(definition["spend_cap"]) if definition.get("spend_cap") else None
    prepaid = bool(ledger.lookup_accounts([ids.wallet(currency)]))
    holds: list[Hold] = []
    accounts: list[Any] = []
    allocations: list[Transfer] = []
    common = {"user_data_128": customer.pk, "user_data_64": meter.pk, "user_data_32": period, "timeout": ttl,
              "flags": TransferFlags.PENDING}
    if hard is not None:
        accounts += [acc.quota_account(customer.pk, meter.pk, period),
                     acc.operator_account(AccountCode.OPERATOR_QUOTA, unit_ledger(meter.pk))]
        allocations.append(acc.quota_allocation(customer.pk, meter.pk, period, hard))
        holds.append(Hold("quota", Transfer(
            id=derive("reserve-quota", customer.pk, reservation_id), debit_account_id=ids.quota(meter.pk, period),
            credit_account_id=acc.operator_account(AccountCode.OPERATOR_QUOTA, unit_ledger(meter.pk)).id,
            amount=acc.qty_units(quantity), ledger=unit_ledger(meter.pk), code=TransferCode.RESERVATION_QUOTA,
            **common)))  # type: ignore[arg-type]
    if (cap is not None or prepaid) and meter.aggregation in ("sum", "count"):
        event = EventUsage(key=None, customer_pk=customer.pk, event_id="", meter=meter, quantity=quantity, usage_at=now,
                           dimensions=dimensions)
        charges = matching_charges(definition, event)
        counter_ids = [ids.counter(meter.pk, key, period) for key in counter_keys(charges)]
        counters = ledger.lookup_accounts(counter_ids)
        cost = Decimal(0)
        for (charge, group), counter_id in zip(charges, counter_ids, strict=True):
            before = acc.units_to_qty(counters[counter_id].debits_posted) if counter_id in counters else Decimal(0)
            cost += marginal_cost(charge, group, before, quantity)
        # A hold is never smaller than what the events can cost (ceil of the exact marginal cost: at least
        # their telescoped amount); an estimate that lowers the period's price (a cheaper volume tier)
        # holds nothing.
        units = max(acc.money_units_ceil(cost), 0)
        money = currency_ledger(currency)
        if cap is not None and units:
            accounts += [acc.spend_account(customer.pk, currency, period),
                         acc.operator_account(AccountCode.OPERATOR_SPEND, money)]
            allocations.append(acc.spend_allocation(customer.pk, currency, period, cap))
            holds.append(Hold("spend", Transfer(
                id=derive("reserve-spend", customer.pk, reservation_id), debit_account_id=ids.spend(currency, period),
                credit_account_id=acc.operator_account(AccountCode.OPERATOR_SPEND, money).id, amount=units, ledger=money,
                code=TransferCode.RESERVATION_SPEND, **common)))  # type: ignore[arg-type]
        if prepaid and units:
            accounts.append(acc.consumed_account(customer.pk, currency, period))
            holds.append(Hold("credits", Transfer(
                id=derive("reserve-credits", customer.pk, reservation_id), debit_account_id=ids.wallet(currency),
                credit_account_id=ids.consumed(currency, period), amount=units,
                ledger=money, code=TransferCode.RESERVATION_CREDITS, **common)))  # type: ignore[arg-type]
    return holds, accounts, allocations


def reservation_create(*, customer: Customer, reservation_id: str, meter: Meter, quantity: Decimal,
                       dimensions: dict[str, str], ttl_seconds: int, now: datetime | None = None
                       ) -> tuple[Reservation, bool]:
    now = now or timezone.now()
    if not 1 <= ttl_seconds <= MAX_TTL:
        raise ApiError(422, "validation_error", "The request is not valid.",
                       {"ttl_seconds": [f"Between 1 and {MAX_TTL} seconds."]})
    if quantity <= 0:
        raise ApiError(422, "validation_error", "The request is not valid.", {"quantity": ["Must be > 0."]})
    existing = Reservation.objects.filter(customer=customer, reservation_id=reservation_id).first()
    if existing is not None:
        same = (existing.meter_id, existing.quantity, existing.dimensions, existing.ttl_seconds) == (
            meter.pk, quantity, dimensions, ttl_seconds)
        if not same:
            raise ApiError(409, "idempotency_conflict", "This reservation_id was used with a different body.")
        return existing, False
    holds, accounts, allocations = _holds(customer, meter, quantity, dimensions, reservation_id, ttl_seconds, now)
    if holds:
        acc.ensure(accounts, allocations)
        chain = [h.transfer if i == len(holds) - 1 else _linked(h.transfer) for i, h in enumerate(holds)]
        statuses = get_ledger().create_transfers(chain)
        for hold, status in zip(holds, statuses, strict=True):
            if status.ok or status is Status.LINKED_EVENT_FAILED:
                continue
            if status in (Status.EXCEEDS_CREDITS, Status.ID_ALREADY_FAILED):
                raise _refused(hold, customer, meter)
            raise RuntimeError(f"ledger refused reservation hold {hold.leg}: {status.value}")
    legs = {h.leg: {"id": str(h.transfer.id), "amount": str(h.transfer.amount)} for h in holds}
    try:
        with transaction.atomic():
            reservation = Reservation.objects.create(
                customer=customer, reservation_id=reservation_id, meter=meter, quantity=quantity, dimensions=dimensions,
                ttl_seconds=ttl_seconds, expires_at=now + timedelta(seconds=ttl_seconds), legs=legs)
    except IntegrityError:  # created concurrently with the same id: the ledger ids were the same too
        return Reservation.objects.get(customer=customer, reservation_id=reservation_id), False
    return reservation, True


def _linked(transfer: Transfer) -> Transfer:
    from dataclasses import replace

    return replace(transfer, flags=transfer.flags | TransferFlags.LINKED)


def _refused(hold: Hold, customer: Customer, meter: Meter) -> ApiError:
    account = get_ledger().lookup_accounts([hold.transfer.debit_account_id]).get(hold.transfer.debit_account_id)
    available = max(account.available, 0) if account else 0
    remaining = acc.units_to_qty(available) if hold.leg == "quota" else acc.units_to_money(available)
    refusal = Refusal(CODES[hold.leg], MESSAGES[hold.leg].format(meter=meter.key),
                      Decimal(format(remaining.normalize(), "f")) if remaining else Decimal(0),
                      meter.unit if hold.leg == "quota" else "")
    body = refusal.as_dict()
    return ApiError(402, refusal.code, refusal.message, extra={k: v for k, v in body.items() if k not in ("code", "message")})


def settle_prefix(reservation: Reservation, used_quantity: Decimal, now: datetime) -> tuple[list[Transfer], Decimal]:
    """The transfers that close the holds (to run first in the settling events' batch) and the
    quantity the quota hold covers."""
    # A settled reservation is settled again identically (a retry): the post answers `exists` and the
    # events' coverage is the same, so nothing is charged twice.
    if reservation.state in (Reservation.State.RELEASED, Reservation.State.EXPIRED) or (
            reservation.state == Reservation.State.PENDING and now >= reservation.expires_at):
        return [], Decimal(0)
    prefix: list[Transfer] = []
    covered = Decimal(0)
    for leg, hold in reservation.legs.items():
        pending_id, held = int(hold["id"]), int(hold["amount"])
        if leg == "quota" and used_quantity > 0:
            post = min(acc.qty_units(used_quantity), held)
            covered = acc.units_to_qty(post)
            prefix.append(Transfer(id=derive("settle-quota", reservation.customer_id, reservation.reservation_id),
                                   pending_id=pending_id, amount=post, flags=TransferFlags.POST_PENDING_TRANSFER))
        else:
            prefix.append(Transfer(id=derive(f"settle-{leg}", reservation.customer_id, reservation.reservation_id),
                                   pending_id=pending_id, amount=0, flags=TransferFlags.VOID_PENDING_TRANSFER))
    return prefix, covered


def reservation_settle(*, reservation: Reservation, principal: Any, raw_events: list[Any],
                       now: datetime | None = None) -> list[Any]:
    """Ingest the actual usage against the reservation's holds, then mark it settled (idempotent)."""
    from billing.usage.services import events_ingest

    now = now or timezone.now()
    results = events_ingest(principal=principal, raw_events=raw_events, now=now, reservation=reservation)
    if reservation.state == Reservation.State.PENDING:
        expired = now >= reservation.expires_at
        reservation.state = Reservation.State.EXPIRED if expired else Reservation.State.SETTLED
        reservation.closed_at = now
        reservation.save(update_fields=["state", "closed_at"])
    return results


def refund_refused_coverage(reservation: Reservation, quantity: Decimal) -> None:
    """Settling events that were refused (their usage beyond the hold did not fit) give back the part
    of the posted hold they had taken: a refused event consumes nothing."""
    if quantity <= 0 or "quota" not in reservation.legs:
        return
    period = acc.period_key(reservation.created_at)
    ledger = unit_ledger(reservation.meter_id)
    status = get_ledger().create_transfers([Transfer(
        id=derive("settle-refund", reservation.customer_id, reservation.reservation_id),
        debit_account_id=acc.operator_account(AccountCode.OPERATOR_QUOTA, ledger).id,
        credit_account_id=acc.Ids(reservation.customer_id).quota(reservation.meter_id, period),
        amount=acc.qty_units(quantity), ledger=ledger, code=TransferCode.RESERVATION_VOID,
        user_data_128=reservation.customer_id, user_data_64=reservation.meter_id, user_data_32=period)])[0]
    if not status.ok:
        raise RuntimeError(f"ledger refused the refund of a refused settlement: {status.value}")


def reservation_release(*, reservation: Reservation, now: datetime | None = None) -> Reservation:
    now = now or timezone.now()
    if reservation.state == Reservation.State.RELEASED:
        return reservation
    if reservation.state == Reservation.State.SETTLED:
        raise ApiError(409, "reservation_closed", "This reservation is already settled.")
    voids = [Transfer(id=derive(f"release-{leg}", reservation.customer_id, reservation.reservation_id),
                      pending_id=int(hold["id"]), amount=0, flags=TransferFlags.VOID_PENDING_TRANSFER)
             for leg, hold in reservation.legs.items()]
    if voids:
        for status in get_ledger().create_transfers(voids):
            if not (status.ok or status in (Status.PENDING_TRANSFER_EXPIRED, Status.PENDING_TRANSFER_ALREADY_VOIDED)):
                raise RuntimeError(f"ledger refused the release: {status.value}")
    expired = now >= reservation.expires_at
    reservation.state = Reservation.State.EXPIRED if expired else Reservation.State.RELEASED
    reservation.closed_at = now
    reservation.save(update_fields=["state", "closed_at"])
    return reservation


def reservations_expire(*, now: datetime | None = None) -> int:
    """Beat sweep: release timed-out holds in the SQL ledger and mark their reservations expired."""
    now = now or timezone.now()
    get_ledger().expire_pending()
    return Reservation.objects.filter(state=Reservation.State.PENDING, expires_at__lte=now).update(
        state=Reservation.State.EXPIRED, closed_at=now)


__all__ = ["AMOUNT_MAX", "reservation_create", "reservation_release", "reservations_expire", "settle_prefix"]
