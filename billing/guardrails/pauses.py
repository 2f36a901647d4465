"""Pauses: kill switches above the run (contract: "Pauses"). While one is active it refuses every event and
reservation of its customer, or of one project, with ``402 paused`` (ingest reads it from the customer's
guard state, billing.guardrails.guards). A pause made by an anomaly is lifted only by an operator."""

from __future__ import annotations

import secrets

from django.db import transaction
from django.utils import timezone

from billing.audit.services import audit_changed, audit_created, snapshot
from billing.common.errors import CommonCode, DomainError, validation_error
from billing.customers.models import Customer, Project
from billing.guardrails import guards
from billing.guardrails.anomaly_closing import anomaly_close
from billing.guardrails.errors import GuardrailsCode
from billing.guardrails.models import Anomaly, Pause
from billing.guardrails.signals import customer_paused


def pause_create(*, customer: Customer, scope: str = Pause.Scope.CUSTOMER, project_key: str | None = None,
                 reason: str, source: str = Pause.Source.OPERATOR, actor: str = "") -> Pause:
    """Pause the customer (or one of its projects) from the next event on."""
    if scope not in Pause.Scope.values:
        raise validation_error({"scope": ["Must be 'customer' or 'project'."]})
    if not reason or len(reason) > 200:
        raise validation_error({"reason": ["Required, at most 200 characters."]})
    project = None
    if scope == Pause.Scope.PROJECT:
        if not project_key:
            raise validation_error({"project": ["Required when scope is 'project'."]})
        project = Project.objects.filter(customer=customer, key=project_key).first()
        if project is None:
            raise validation_error({"project": [f"No project '{project_key}' for this customer."]})
    with transaction.atomic():
        pause = Pause.objects.create(pause_id=f"pau_{secrets.token_hex(8)}", customer=customer, scope=scope,
                                     project=project, reason=reason, source=source, created_by=actor)
        guards.bump([customer.pk])
        audit_created(pause, action="pause.create", actor=actor or f"system:{source}")
        transaction.on_commit(lambda: customer_paused.send(sender=Pause, pause_id=pause.pk))
    return pause


def pause_lift(*, customer: Customer, pause_id: str, actor: str = "", operator: bool = True) -> Pause:
    """Lift an active pause. A pause an anomaly made is the operator's to lift (``operator``)."""
    with transaction.atomic():
        pause = Pause.objects.select_for_update().filter(customer=customer, pause_id=pause_id).first()
        if pause is None:
            raise DomainError(CommonCode.NOT_FOUND, "No such pause.")
        if pause.lifted_at is not None:
            return pause
        if pause.source == Pause.Source.ANOMALY and not operator:
            raise DomainError(GuardrailsCode.PAUSE_OPERATOR_ONLY,
                              "This pause was made by an anomaly: only the operator can lift it.")
        before = snapshot(pause)
        pause.lifted_at, pause.lifted_by = timezone.now(), actor
        pause.save(update_fields=["lifted_at", "lifted_by"])
        for anomaly in Anomaly.objects.select_for_update().filter(pause=pause, status=Anomaly.Status.OPEN):
            # lifted before its anomaly was reviewed: that is the operator's "resume"
            anomaly_close(anomaly, resolution=Anomaly.Resolution.RESUME, note="Resumed by lifting its pause.",
                          actor=actor, now=pause.lifted_at)
        guards.bump([customer.pk])
        audit_changed(pause, before, action="pause.lift", actor=actor)
    return pause


def pause_as_dict(pause: Pause) -> dict[str, object]:
    return {"pause_id": pause.pause_id, "customer": pause.customer.external_id, "scope": pause.scope,
            "project": pause.project.key if pause.project is not None else None, "reason": pause.reason,
            "source": pause.source, "created_by": pause.created_by, "created_at": pause.created_at,
            "lifted_at": pause.lifted_at, "active": pause.lifted_at is None}
