"""A customer's guard state: its active pauses, its stopped runs (tripped or killed), its budgets and its
override of the plan's terms (docs/guardrails.md).

Ingest reads each customer's ``guard_revision`` with the customer (the same statement); every change of
that state bumps it in the changing transaction (``bump``), so the state is read again only after it
changed, and a process never acts on a state older than the revision it read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import F

from billing.catalog.ratecard import Limit, RateCard, anomaly_of, limit_of, run_limits_of
from billing.common import process_caches
from billing.common.errors import DomainError
from billing.customers.models import Customer
from billing.guardrails.errors import GuardrailsCode
from billing.guardrails.models import Budget, CustomerOverride, Pause, Run


@dataclass(frozen=True)
class BudgetTerms:
    """What ingest needs of a budget."""

    pk: int
    budget_id: str
    project_pk: int | None
    dimension: tuple[tuple[str, str], ...]
    api_key_pk: int | None
    amount: Decimal
    period: str
    blocking: bool

    def covers(self, project_pk: int | None, dimensions: dict[str, str], api_key_pk: int | None) -> bool:
        if self.project_pk is not None and project_pk != self.project_pk:
            return False
        if self.api_key_pk is not None and api_key_pk != self.api_key_pk:
            return False
        return all(dimensions.get(k) == v for k, v in self.dimension)


@dataclass
class Override:
    """A customer's override (``CustomerOverride.terms``) applied to a rate card: a limit per meter replaces
    the plan's limit of that meter, ``spend_cap``, ``run_limits`` and ``anomaly`` replace the plan's when
    present (``spend_cap: null`` removes the cap)."""

    revision: int
    limits: dict[str, Limit]
    terms: dict[str, Any]
    _cards: dict[int, tuple[RateCard, RateCard]] = field(default_factory=dict)

    @classmethod
    def of(cls, revision: int, terms: dict[str, Any]) -> Override:
        return cls(revision, {raw["meter"]: limit_of(raw) for raw in terms.get("limits") or ()}, terms)

    def apply(self, card: RateCard) -> RateCard:
        """The card with this override applied; the same object for the same card (limits' caches key on it)."""
        found = self._cards.get(id(card))
        if found is not None and found[0] is card:
            return found[1]
        limits = [self.limits.get(limit.meter, limit) for limit in card.limits]
        limits += [limit for meter, limit in self.limits.items() if card.limit_of(meter) is None]
        changes: dict[str, Any] = {"limits": tuple(limits)}
        if "spend_cap" in self.terms:
            cap = self.terms["spend_cap"]
            changes["spend_cap"] = None if cap is None else Decimal(str(cap))
        if "run_limits" in self.terms:
            changes["run_limits"] = run_limits_of(self.terms["run_limits"])
        if "anomaly" in self.terms:
            changes["anomaly"] = anomaly_of(self.terms["anomaly"])
        applied = dataclasses.replace(card, **changes)
        self._cards[id(card)] = (card, applied)
        return applied


@dataclass(frozen=True)
class GuardState:
    revision: int
    paused: str | None = None  # the reason of an active customer-wide pause
    paused_projects: dict[int, str] = field(default_factory=dict)  # project pk -> reason
    stopped_runs: dict[str, tuple[str, str]] = field(default_factory=dict)  # run id -> (state, breaker)
    budgets: tuple[BudgetTerms, ...] = ()
    override: Override | None = None


NONE = GuardState(0)

_STATES: dict[int, GuardState] = process_caches.register("billing.guardrails.guards._STATES", {})
_STATES_MAX = 50_000


def guard_state(customer_pk: int, revision: int) -> GuardState:
    """The customer's guard state at ``revision`` (or later); read from the database only when it moved."""
    if revision == 0:
        return NONE
    cached = _STATES.get(customer_pk)
    if cached is not None and cached.revision >= revision:
        return cached
    state = _load(customer_pk, revision)
    if len(_STATES) >= _STATES_MAX:
        _STATES.clear()
    _STATES[customer_pk] = state
    return state


def guard_states(revisions: dict[int, int]) -> dict[int, GuardState]:
    return {pk: guard_state(pk, revision) for pk, revision in revisions.items()}


def current_state(customer_pk: int) -> GuardState:
    """The state at the customer's current revision (outside ingest, which reads the revision itself)."""
    return current_states([customer_pk]).get(customer_pk, NONE)


def current_states(customer_pks: Iterable[int]) -> dict[int, GuardState]:
    """``current_state`` of several customers (one statement for their revisions)."""
    pks = sorted(set(customer_pks))
    if not pks:
        return {}
    return guard_states(dict(Customer.objects.filter(pk__in=pks).values_list("pk", "guard_revision")))


def _load(customer_pk: int, revision: int) -> GuardState:
    paused = None
    paused_projects: dict[int, str] = {}
    for scope, project_pk, reason in Pause.objects.filter(customer_id=customer_pk, lifted_at__isnull=True).order_by(
            "created_at").values_list("scope", "project_id", "reason"):
        if scope == Pause.Scope.CUSTOMER:
            paused = paused or reason or "paused"
        elif project_pk is not None:
            paused_projects.setdefault(project_pk, reason or "paused")
    stopped = {run_id: (state, breaker) for run_id, state, breaker in Run.objects.filter(
        customer_id=customer_pk).exclude(state=Run.State.OPEN).values_list("run_id", "state", "breaker")}
    budgets = tuple(budget_terms(b) for b in Budget.objects.filter(customer_id=customer_pk).order_by("pk"))
    override = None
    row = CustomerOverride.objects.filter(customer_id=customer_pk).values_list("revision", "terms").first()
    if row is not None:
        override = Override.of(row[0], row[1] or {})
    return GuardState(revision, paused, paused_projects, stopped, budgets, override)


def budget_terms(budget: Budget) -> BudgetTerms:
    scope = budget.scope or {}
    return BudgetTerms(budget.pk, budget.budget_id, scope.get("project_pk"),
                       tuple(sorted((scope.get("dimension") or {}).items())), scope.get("api_key_pk"),
                       budget.amount, budget.period, budget.action == Budget.Action.BLOCK)


def bump(customer_pks: Iterable[int]) -> None:
    """Mark the customers' guard state changed (call inside the changing transaction)."""
    pks = sorted(set(customer_pks))
    if pks:
        Customer.objects.filter(pk__in=pks).update(guard_revision=F("guard_revision") + 1)




def refusal_of(state: GuardState, project_pk: int | None, run_id: str) -> DomainError | None:
    """The 402 a pause or a stopped run answers an event (or a reservation) with, if one covers it: a
    pause wins over a run's breaker (docs/guardrails.md, "Order of checks")."""
    if state.paused is not None:
        return DomainError(GuardrailsCode.PAUSED, f"The customer is paused: {state.paused}.")
    if project_pk is not None and project_pk in state.paused_projects:
        return DomainError(GuardrailsCode.PAUSED, f"The project is paused: {state.paused_projects[project_pk]}.")
    stopped = state.stopped_runs.get(run_id) if run_id else None
    if stopped is not None:
        run_state, breaker = stopped
        why = "was killed" if run_state == Run.State.KILLED else f"tripped its {breaker} breaker"
        return DomainError(GuardrailsCode.CIRCUIT_OPEN, f"Run '{run_id}' {why}; release it to go on.",
                           extra={"run_id": run_id, "state": run_state, "breaker": breaker})
    return None
