"""Agent runs and their circuit breakers (contract: "Circuit breakers for agent runs").

A run is the events that carry its ``trace.run_id``. Its steps and spend are counted on the ledger, in the
same booking as the customer's limits (billing.guardrails.limits.plans: one steps account allocated
``max_steps``, one spend account per currency allocated ``max_spend``), so the breakers are exact under
concurrency like any limit. The first event that would exceed one is refused with ``402 circuit_open``
and the run is then *tripped* here (``runs_trip``): from then on the customer's guard state refuses every
event and reservation of the run before any limit is asked, until ``run_release``. ``run_kill`` is the
kill switch: the same refusals, state ``killed``.

Tripping is written just after the refusing batch commits: an event of the run sent between the two
could still be accepted if it fits the breaker (a smaller step under ``max_spend``); ``max_steps`` is
exact either way (its account is full).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django.db import IntegrityError, transaction

from billing.audit.services import audit_record, snapshot
from billing.catalog.selectors import subscription_at
from billing.common.errors import CommonCode, DomainError
from billing.common.fields import decimal_to_text
from billing.customers.models import Customer
from billing.guardrails import accounts as acc
from billing.guardrails import guards
from billing.guardrails.models import Run
from billing.guardrails.signals import circuit_tripped, run_killed
from ledger.backends import get_ledger
from ledger.types import Account


def run_detail(*, customer: Customer, run_id: str) -> dict[str, Any]:
    """The run as the contract shows it: state, steps and spend so far (from its ledger accounts), when
    its first event was counted, and the breaker that stopped it. 404 for a run never seen."""
    row = Run.objects.filter(customer=customer, run_id=run_id).first()
    steps_id = acc.Ids(customer.pk).run_steps(run_id)
    subscription = subscription_at(customer=customer, at=datetime.now(timezone.utc))
    currency = subscription.plan.currency if subscription is not None else None
    spend_id = acc.Ids(customer.pk).run_spend(currency, run_id) if currency else None
    found = get_ledger().lookup_accounts([i for i in (steps_id, spend_id) if i is not None])
    steps, spend = found.get(steps_id), found.get(spend_id) if spend_id is not None else None
    if row is None and steps is None:
        raise DomainError(CommonCode.NOT_FOUND, "No such run: no event of it was counted.")
    started = row.started_at if row is not None and row.started_at else _created_at(steps)
    out: dict[str, Any] = {
        "run_id": run_id, "customer": customer.external_id,
        "state": row.state if row is not None else Run.State.OPEN,
        "steps": steps.debits_posted if steps is not None else 0,
        "spend": decimal_to_text(acc.units_to_money(spend.debits_posted if spend is not None else 0)),
        "currency": currency, "started_at": started,
    }
    if row is not None and row.breaker and row.state != Run.State.OPEN:
        out["breaker"] = row.breaker
    return out


def runs_trip(trips: list[tuple[int, str, str]]) -> list[Run]:
    """Trip each (customer pk, run id, breaker) whose run is open; returns the runs tripped now (a run
    already tripped or killed is left as it is). Sends ``circuit_tripped`` once per trip, after commit."""
    tripped: list[Run] = []
    for customer_pk, run_id, breaker in dict.fromkeys(trips):
        run = _changed(customer_pk, run_id, Run.State.TRIPPED, breaker, only_from=Run.State.OPEN,
                       actor="system:breaker")
        if run is not None:
            tripped.append(run)
            transaction.on_commit(lambda r=run: circuit_tripped.send(  # type: ignore[misc]
                sender=Run, customer_id=r.customer_id, run_id=r.run_id, breaker=r.breaker))
    return tripped


def run_kill(*, customer: Customer, run_id: str, actor: str = "") -> Run:
    """The kill switch: the run's later events and reservations are refused (``402 circuit_open``)."""
    run = _changed(customer.pk, run_id, Run.State.KILLED, "kill", only_from=None, actor=actor)
    if run is None:
        return Run.objects.get(customer=customer, run_id=run_id)
    transaction.on_commit(lambda: run_killed.send(sender=Run, customer_id=customer.pk, run_id=run_id))
    return run


def run_release(*, customer: Customer, run_id: str, actor: str = "") -> Run:
    """Back to ``open``, counters kept: a breaker that is still exceeded trips again on the next event."""
    run = _changed(customer.pk, run_id, Run.State.OPEN, "", only_from=None, actor=actor)
    if run is None:
        found = Run.objects.filter(customer=customer, run_id=run_id).first()
        if found is None:
            raise DomainError(CommonCode.NOT_FOUND, "No such run: it was never tripped or killed.")
        return found
    return run


def _changed(customer_pk: int, run_id: str, state: str, breaker: str, *, only_from: str | None,
             actor: str = "system") -> Run | None:
    """Move the run to ``state`` (creating its row), bumping the customer's guard revision; None when it
    is in ``state`` already, or not in ``only_from``."""
    for _ in range(2):  # a concurrent first writer of the row: read it again
        try:
            with transaction.atomic():
                run = Run.objects.select_for_update().filter(customer_id=customer_pk, run_id=run_id).first()
                before = snapshot(run)
                if run is None:
                    if state == Run.State.OPEN:
                        return None
                    run = Run.objects.create(customer_id=customer_pk, run_id=run_id, state=state, breaker=breaker,
                                             started_at=_first_step(customer_pk, run_id))
                elif run.state == state or (only_from is not None and run.state != only_from):
                    return None
                else:
                    run.state, run.breaker = state, breaker
                    run.save(update_fields=["state", "breaker", "changed_at"])
                guards.bump([customer_pk])
                audit_record(actor=actor, action=f"run.{state}", obj=run, before=before, after=snapshot(run))
                return run
        except IntegrityError:
            continue
    return None


def _first_step(customer_pk: int, run_id: str) -> datetime | None:
    steps_id = acc.Ids(customer_pk).run_steps(run_id)
    return _created_at(get_ledger().lookup_accounts([steps_id]).get(steps_id))


def _created_at(account: Account | None) -> datetime | None:
    """When the ledger made the run's steps account: its first counted event (the ledger's clock)."""
    if account is None or not account.timestamp:
        return None
    return datetime.fromtimestamp(account.timestamp // 1_000_000_000, tz=timezone.utc)
