"""Limits as one linked chain per event (``enforce``): the ledger decides each event, all or nothing; ids
derive from (customer, event_id, leg), so a retried event never debits twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from billing.catalog.money import LEDGER_SCALE
from billing.guardrails import accounts as acc
from billing.guardrails.limits.charges import EXACT, Charge, ceil_units
from billing.guardrails.limits.events import CODES, EventUsage, Refusal, refusal
from billing.guardrails.limits.plans import LimitTerms, prepare
from billing.guardrails.limits.terms import Terms
from ledger.backends import get_ledger
from ledger.codes import AccountCode, TransferCode
from ledger.types import Status, Transfer, TransferFlags

CLOSED = {Status.PENDING_TRANSFER_ALREADY_POSTED, Status.PENDING_TRANSFER_ALREADY_VOIDED,
          Status.PENDING_TRANSFER_EXPIRED}


LINKED = TransferFlags.LINKED


@dataclass
class _Chain:
    event: EventUsage
    transfers: list[Transfer] = field(default_factory=list)
    legs: list[str] = field(default_factory=list)
    accounts: dict[str, tuple[int, str]] = field(default_factory=dict)  # leg -> (account id, unit)


def enforce(events: list[EventUsage], prefix: list[Transfer] | None = None,
            terms: Terms | None = None) -> dict[Any, Refusal]:
    """Debit the ledger for ``events`` (in order), one linked chain per event with ids derived from the
    event; return the refused ones by key. Events of customers without a plan limit, spend cap or credit
    wallet pass untouched (and cost no ledger call). ``prefix`` (a reservation's post/void) runs first in
    the same ledger batch. For any backend, before the events are stored: a retry finds its transfers
    by their ids (``exists``) and debits nothing twice."""
    prefix = prefix or []
    events = [e for e in events if e.quantity > 0]
    prepared = prepare(events, terms) if events else None
    if prepared is None or not prepared.plans:
        _submit(prefix)
        return {}
    ledger = get_ledger()
    cumulative = {k: a.debits_posted for k, a in ledger.lookup_accounts(prepared.counters).items()}
    chains = [_chain(event, shared, charges, cumulative) for event, shared, charges in prepared.plans]
    transfers = prefix + [t for chain in chains for t in chain.transfers]
    statuses = ledger.create_transfers(transfers) if transfers else []
    _check_prefix(prefix, statuses[:len(prefix)])
    return _refusals(chains, statuses[len(prefix):], ledger)


def _submit(prefix: list[Transfer]) -> None:
    if prefix:
        _check_prefix(prefix, get_ledger().create_transfers(prefix))


def _check_prefix(prefix: list[Transfer], statuses: list[Status]) -> None:
    for transfer, status in zip(prefix, statuses, strict=True):
        if not (status.ok or status in CLOSED):
            raise RuntimeError(f"ledger refused closing hold {transfer.pending_id}: {status.value}")


def _chain(event: EventUsage, shared: LimitTerms, charges: list[Charge], cumulative: dict[int, int]) -> _Chain:
    chain = _Chain(event)
    customer_pk, meter_pk, period = event.customer_pk, event.meter.pk, shared.period
    qty = acc.qty_units(event.quantity)
    covered_qty = event.coverage.take_quantity(event.quantity) if event.coverage else Decimal(0)
    event.covered_quantity = covered_qty
    linear = Decimal(0)
    cost_units = 0  # the event's ledger cost (priced's rounding rule)
    legs: list[tuple[int, int, int, int, int, TransferCode]] = []  # id, debit, credit, amount, ledger, code
    if shared.priced:
        unit = shared.unit_ledger
        for charge in charges:
            if charge.counter_id is None:
                linear += charge.marginal(Decimal(0), event.quantity)
                continue
            counter_id = charge.counter_id
            cost_units += charge.ledger_units(cumulative.get(counter_id, 0), event.quantity)
            cumulative[counter_id] = cumulative.get(counter_id, 0) + qty
            legs.append((shared.counter_transfer_id(event.event_id, charge.index), counter_id,
                         acc.operator_account(AccountCode.OPERATOR_COUNTER, unit).id, qty, unit,
                         TransferCode.USAGE_COUNTER))
            chain.legs.append("counter")
    uncovered = acc.qty_units(event.quantity - covered_qty)
    if shared.hard is not None and uncovered:
        unit = shared.unit_ledger
        legs.append((shared.quota_transfer_id(event.event_id), shared.quota_id,
                     acc.operator_account(AccountCode.OPERATOR_QUOTA, unit).id, uncovered, unit, TransferCode.USAGE_QUOTA))
        chain.legs.append("quota")
        chain.accounts["quota"] = (shared.quota_id, event.meter.unit)
    if linear:
        cost_units += ceil_units(EXACT.scaleb(linear, LEDGER_SCALE))
    if event.coverage and cost_units > 0:
        cost_units -= acc.money_units_ceil(event.coverage.take_cost(acc.units_to_money(cost_units)))
    money = shared.money_ledger
    # A negative cost (the event takes the period into a cheaper volume tier) debits nothing: the same legs
    # (same ids: an event has one spend and one credits leg, whichever way) give it back to the customer.
    if shared.cap is not None and cost_units > 0:
        legs.append((shared.spend_transfer_id(event.event_id), shared.spend_id,
                     acc.operator_account(AccountCode.OPERATOR_SPEND, money).id, cost_units, money,
                     TransferCode.USAGE_SPEND))
        chain.legs.append("spend")
        chain.accounts["spend"] = (shared.spend_id, shared.currency)
    elif shared.cap is not None and cost_units < 0:
        legs.append((shared.spend_transfer_id(event.event_id), acc.operator_account(AccountCode.OPERATOR_SPEND, money).id,
                     shared.spend_id, -cost_units, money, TransferCode.USAGE_SPEND_REFUND))
        chain.legs.append("spend_refund")
    if shared.prepaid and cost_units > 0:
        legs.append((shared.credits_transfer_id(event.event_id), shared.wallet_id, shared.consumed_id, cost_units, money,
                     TransferCode.USAGE_CREDITS))
        chain.legs.append("credits")
        chain.accounts["credits"] = (shared.wallet_id, shared.currency)
    elif shared.prepaid and cost_units < 0:
        legs.append((shared.credits_transfer_id(event.event_id), shared.consumed_id, shared.wallet_id, -cost_units,
                     money, TransferCode.USAGE_CREDITS_REFUND))
        chain.legs.append("credits_refund")
    # link every transfer of the event's chain but the last: all or nothing
    last = len(legs) - 1
    chain.transfers = [
        Transfer(id=tid, debit_account_id=debit, credit_account_id=credit, amount=amount, ledger=ledger, code=code,
                 flags=LINKED if i < last else TransferFlags.NONE, user_data_128=customer_pk, user_data_64=meter_pk,
                 user_data_32=period)
        for i, (tid, debit, credit, amount, ledger, code) in enumerate(legs)]
    return chain


def _refusals(chains: list[_Chain], statuses: list[Status], ledger: Any) -> dict[Any, Refusal]:
    refused: dict[Any, tuple[_Chain, str]] = {}
    position = 0
    for chain in chains:
        own = statuses[position:position + len(chain.transfers)]
        position += len(chain.transfers)
        for leg, status in zip(chain.legs, own, strict=True):
            if status.ok or status is Status.LINKED_EVENT_FAILED:
                continue
            if status in (Status.EXCEEDS_CREDITS, Status.ID_ALREADY_FAILED) and leg in CODES:
                refused[chain.event.key] = (chain, leg)
            elif status.value.startswith("exists_with_different"):
                # The event's legs were applied before (a retry, or a concurrent twin): marginal prices
                # depend on when they are computed, so a retry may price differently, but nothing is
                # applied twice. Whether the body is the same is the event table's call (duplicate/409).
                pass
            else:
                raise RuntimeError(f"ledger refused usage of event {chain.event.event_id}: {leg} {status.value}")
            break
    if not refused:
        return {}
    ids = [c.accounts[leg][0] for c, leg in refused.values() if leg in c.accounts]
    balances = ledger.lookup_accounts(ids)
    out: dict[Any, Refusal] = {}
    for key, (chain, leg) in refused.items():
        account_id, unit = chain.accounts[leg]
        account = balances.get(account_id)
        out[key] = refusal(leg, chain.event.meter.key, account.available if account else 0, unit)
    return out
