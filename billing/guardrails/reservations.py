"""Reserve, then settle (contract.md, "Reservations").

reserve:  the estimate is held as pending ledger transfers with a timeout (quota units, and the
          estimate's marginal cost against the spend cap and the credit wallet), one linked chain:
          it fits whole or is refused (402). Held amounts count against the limits while pending.
settle:   the quota hold is posted up to the quantity actually used (the rest is released), the money
          holds are voided, then the settling events go through the limits like any batch
          (billing.usage.services.reservation_settle, billing.usage.ingest.debit), their quota debited
          only beyond what the reservation held. On the SQL ledger the holds are closed in the
          transaction that books the events, under the accounts' locks: nothing released can be taken
          by anyone else first. On TigerBeetle they are closed just before (another request may take
          released room in between).
release:  voids every hold.
expiry:   TigerBeetle releases timed-out holds itself; for the SQL backend a Celery beat sweep does
          (and every ledger write and lookup releases what is due first).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing.catalog.models import Meter
from billing.common.calendar import period_key
from billing.common.errors import CommonCode, DomainError, validation_error
from billing.customers.models import Customer
from billing.guardrails import accounts as acc
from billing.guardrails.errors import GuardrailsCode
from billing.guardrails.guards import current_state, refusal_of
from billing.guardrails.limits import BatchDebit, EventUsage, SubscribedPlans
from billing.guardrails.limits.events import CREDITS, OPERATOR_OF, QUOTA, SPEND, TOTAL, refusal
from billing.guardrails.models import Reservation
from ledger.backends import get_ledger
from ledger.codes import AccountCode, TransferCode, unit_ledger
from ledger.ids import derive
from ledger.types import AMOUNT_MAX, Status, Transfer, TransferFlags

MAX_TTL = 24 * 3600


@dataclass
class Hold:
    leg: str
    transfer: Transfer


_HOLD_OF = {QUOTA: ("quota", TransferCode.RESERVATION_QUOTA), SPEND: ("spend", TransferCode.RESERVATION_SPEND),
            CREDITS: ("credits", TransferCode.RESERVATION_CREDITS)}


@dataclass(frozen=True)
class Origin:
    """Where a reservation's usage will come from: its agent run (``trace.run_id``), its project and the
    API key that asked. A pause or a stopped run covering it refuses it; its run's breakers and the
    budgets covering it are checked against the estimate (not held: they are debited when it settles)."""

    run_id: str = ""
    project_pk: int | None = None
    api_key_pk: int | None = None


def _holds(customer: Customer, meter: Meter, quantity: Decimal, dimensions: dict[str, str], reservation_id: str,
           ttl: int, now: datetime, origin: Origin) -> list[Hold]:
    """The pending transfers of a reservation: what the limits' engine (``BatchDebit``) would debit for one
    event of the estimate now (quota units; its marginal cost against the spend cap and the credits),
    held instead. A limit on each event (max, latest) is checked here and holds nothing; nor does a limit
    on distinct values (unique_count: a value is counted when an event settles) or a cost below zero.
    A refusal (``DomainError``) when the estimate does not fit."""
    if meter.aggregation == Meter.Aggregation.UNIQUE_COUNT:
        # the estimate counts no value (a value is counted when an event settles, and such a meter is not
        # priced): the engine need not read one, nor wait for one being counted
        dimensions = {k: v for k, v in dimensions.items() if k != meter.unique_by}
    state = current_state(customer.pk)
    stopped = refusal_of(state, origin.project_pk, origin.run_id)
    if stopped is not None:
        raise stopped
    estimate = EventUsage(key=0, customer_pk=customer.pk, event_id=reservation_id, meter=meter, quantity=quantity,
                          usage_at=now, dimensions=dimensions, run_id=origin.run_id, project_pk=origin.project_pk,
                          api_key_pk=origin.api_key_pk)
    debit = BatchDebit([estimate], SubscribedPlans([customer.pk], states={customer.pk: state}), lock=False)
    refused = debit.decide(skip=set())  # event by event: the legs of the one event
    if refused:
        raise refused[0].as_error()
    holds: list[Hold] = []
    for account_id, code, ledger_id, _meter, period, amount, terms in (debit.accepted[0][1] if debit.accepted else []):
        if code not in _HOLD_OF or amount <= 0 or (code == QUOTA and terms.kind != TOTAL):
            continue
        leg, hold_code = _HOLD_OF[code]
        other = terms.consumed_id if code == CREDITS else acc.operator_account(OPERATOR_OF[code], ledger_id).id
        holds.append(Hold(leg, Transfer(
            id=derive(f"reserve-{leg}", customer.pk, reservation_id), debit_account_id=account_id,
            credit_account_id=other, amount=amount, ledger=ledger_id, code=hold_code, user_data_128=customer.pk,
            user_data_64=meter.pk, user_data_32=period, timeout=ttl, flags=TransferFlags.PENDING)))
    return holds


def reservation_create(*, customer: Customer, reservation_id: str, meter: Meter, quantity: Decimal,
                       dimensions: dict[str, str], ttl_seconds: int, now: datetime | None = None,
                       origin: Origin | None = None, fresh: bool = False) -> tuple[Reservation, bool]:
    """Hold the estimate, or return the reservation already made with this id (created False). ``fresh``:
    the caller drew the id itself just now (the gateway), so no earlier one is looked for; a concurrent
    twin still cannot happen twice (the unique id, below)."""
    now = now or timezone.now()
    if not 1 <= ttl_seconds <= MAX_TTL:
        raise validation_error({"ttl_seconds": [f"Between 1 and {MAX_TTL} seconds."]})
    if quantity <= 0:
        raise validation_error({"quantity": ["Must be > 0."]})
    existing = None if fresh else Reservation.objects.filter(customer=customer, reservation_id=reservation_id).first()
    if existing is not None:
        same = (existing.meter_id, existing.quantity, existing.dimensions, existing.ttl_seconds) == (
            meter.pk, quantity, dimensions, ttl_seconds)
        if not same:
            raise DomainError(CommonCode.IDEMPOTENCY_CONFLICT, "This reservation_id was used with a different body.")
        return existing, False
    holds = _holds(customer, meter, quantity, dimensions, reservation_id, ttl_seconds, now, origin or Origin())
    if holds:
        chain = [h.transfer if i == len(holds) - 1 else _linked(h.transfer) for i, h in enumerate(holds)]
        statuses = get_ledger().create_transfers(chain, fresh=fresh)
        for hold, status in zip(holds, statuses, strict=True):
            if status.ok or status is Status.LINKED_EVENT_FAILED:
                continue
            if status in (Status.EXCEEDS_CREDITS, Status.ID_ALREADY_FAILED):
                raise _refused(hold, customer, meter)
            raise RuntimeError(f"ledger refused reservation hold {hold.leg}: {status.value}")
    legs = {h.leg: {"id": str(h.transfer.id), "amount": str(h.transfer.amount)} for h in holds}
    # one INSERT: in autocommit it is its own transaction (no BEGIN/COMMIT round trips); inside a caller's
    # transaction, a savepoint keeps that transaction usable when the insert fails
    try:
        with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
            reservation = Reservation.objects.create(
                customer=customer, reservation_id=reservation_id, meter=meter, quantity=quantity, dimensions=dimensions,
                ttl_seconds=ttl_seconds, expires_at=now + timedelta(seconds=ttl_seconds), legs=legs)
    except IntegrityError:  # created concurrently with the same id: the ledger ids were the same too
        return Reservation.objects.get(customer=customer, reservation_id=reservation_id), False
    return reservation, True


def _linked(transfer: Transfer) -> Transfer:
    from dataclasses import replace

    return replace(transfer, flags=transfer.flags | TransferFlags.LINKED)


def _refused(hold: Hold, customer: Customer, meter: Meter) -> DomainError:
    """The ledger refused a hold (the account moved since the estimate was decided)."""
    account = get_ledger().lookup_accounts([hold.transfer.debit_account_id]).get(hold.transfer.debit_account_id)
    return refusal(hold.leg, meter.key, account.available if account else 0,
                   meter.unit if hold.leg == "quota" else "").as_error()


_CLOSED = {Status.PENDING_TRANSFER_ALREADY_POSTED, Status.PENDING_TRANSFER_ALREADY_VOIDED,
           Status.PENDING_TRANSFER_EXPIRED}


def check_closed(prefix: list[Transfer], statuses: list[Status]) -> None:
    """A settle's post and voids are booked, or their hold was closed already (released, expired)."""
    for transfer, status in zip(prefix, statuses, strict=True):
        if not (status.ok or status in _CLOSED):
            raise RuntimeError(f"ledger refused closing hold {transfer.pending_id}: {status.value}")


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


def refund_refused_coverage(reservation: Reservation, quantity: Decimal) -> None:
    """Settling events that were refused (their usage beyond the hold did not fit) give back the part
    of the posted hold they had taken: a refused event consumes nothing."""
    if quantity <= 0 or "quota" not in reservation.legs:
        return
    period = period_key(reservation.created_at)
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
        raise DomainError(GuardrailsCode.RESERVATION_CLOSED, "This reservation is already settled.")
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
