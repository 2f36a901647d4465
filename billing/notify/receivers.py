"""The events, emitted from the other apps' signals (connected in apps.py; each is sent after commit).

A receiver never lets a webhook problem reach the app that sent the signal: it logs it instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.dispatch import receiver

from billing.common.fields import decimal_to_text
from billing.customers.models import Customer
from billing.guardrails.anomalies.selectors import anomaly_as_dict
from billing.guardrails.models import Alert, Anomaly, Pause, Run
from billing.guardrails.pauses import pause_as_dict
from billing.guardrails.runs import run_detail
from billing.guardrails.selectors import BUDGET_TARGET_PREFIX
from billing.guardrails.signals import (
    anomaly_opened,
    anomaly_resolved,
    circuit_tripped,
    customer_paused,
    run_killed,
    soft_limit_crossed,
)
from billing.invoicing.models import Invoice
from billing.invoicing.selectors import invoice_as_dict
from billing.invoicing.signals import invoice_finalized, invoice_status_changed
from billing.notify import event_types
from billing.notify.invoice_emails import invoice_email_queue
from billing.notify.services import event_emit

log = logging.getLogger(__name__)

INVOICE_STATUS_EVENTS: dict[str, str] = {Invoice.Status.PAID.value: event_types.INVOICE_PAID,
                                         Invoice.Status.VOID.value: event_types.INVOICE_VOIDED}


def _emit_invoice(type_: str, invoice_id: int) -> None:
    try:
        invoice = (Invoice.objects.select_related("customer", "plan").prefetch_related("lines")
                   .filter(pk=invoice_id).first())
        if invoice is not None:
            event_emit(type=type_, key=f"{type_}:{invoice.pk}", data={"invoice": invoice_as_dict(invoice)})
    except Exception:
        log.exception("webhook event %s of invoice %s not emitted", type_, invoice_id)


@receiver(invoice_finalized, dispatch_uid="notify.invoice_finalized")
def on_invoice_finalized(sender: Any, invoice_id: int, **kwargs: Any) -> None:
    _emit_invoice(event_types.INVOICE_FINALIZED, invoice_id)
    try:
        invoice_email_queue(invoice_pk=invoice_id)
    except Exception:  # the sweep queues it again; finalization has committed either way
        log.exception("the email of invoice %s was not queued", invoice_id)


@receiver(invoice_status_changed, dispatch_uid="notify.invoice_status_changed")
def on_invoice_status_changed(sender: Any, invoice_id: int, status: str, **kwargs: Any) -> None:
    type_ = INVOICE_STATUS_EVENTS.get(status)
    if type_ is not None:
        _emit_invoice(type_, invoice_id)


def alert_data(alert: Alert) -> dict[str, Any]:
    return {"alert": {"customer": alert.customer.external_id, "target": alert.target,
                      "percent": decimal_to_text(alert.percent), "limit": decimal_to_text(alert.limit),
                      "used": decimal_to_text(alert.used), "unit": alert.unit, "crossed_at": alert.crossed_at,
                      "period_start": alert.period_start, "period_end": alert.period_end}}


@receiver(soft_limit_crossed, dispatch_uid="notify.soft_limit_crossed")
def on_soft_limit_crossed(sender: Any, alert_ids: list[int], **kwargs: Any) -> None:
    for alert in Alert.objects.select_related("customer").filter(pk__in=alert_ids).order_by("pk"):
        type_ = event_types.BUDGET_ALERT if alert.target.startswith(BUDGET_TARGET_PREFIX) else event_types.ALERT_SOFT_LIMIT
        try:
            data = alert_data(alert)
            if type_ == event_types.BUDGET_ALERT:
                data["budget"] = alert.target.removeprefix(BUDGET_TARGET_PREFIX).split("@")[0]
            event_emit(type=type_, key=f"{type_}:{alert.pk}", data=data)
        except Exception:
            log.exception("webhook event %s of alert %s not emitted", type_, alert.pk)


def _emit_guard(type_: str, key: str, build: Callable[[], dict[str, Any]]) -> None:
    try:
        event_emit(type=type_, key=key, data=build())
    except Exception:
        log.exception("webhook event %s (%s) not emitted", type_, key)


@receiver(customer_paused, dispatch_uid="notify.customer_paused")
def on_customer_paused(sender: Any, pause_id: int, **kwargs: Any) -> None:
    def build() -> dict[str, Any]:
        return {"pause": pause_as_dict(Pause.objects.select_related("customer", "project").get(pk=pause_id))}

    _emit_guard(event_types.CUSTOMER_PAUSED, f"{event_types.CUSTOMER_PAUSED}:{pause_id}", build)


@receiver(circuit_tripped, dispatch_uid="notify.circuit_tripped")
def on_circuit_tripped(sender: Any, customer_id: int, run_id: str, breaker: str, **kwargs: Any) -> None:
    def build() -> dict[str, Any]:
        return {"run": run_detail(customer=Customer.objects.get(pk=customer_id), run_id=run_id)}

    run = Run.objects.filter(customer_id=customer_id, run_id=run_id).values_list("pk", "changed_at").first()
    stamp = f"{run[0]}:{run[1]:%Y%m%dT%H%M%S.%f}" if run else run_id
    _emit_guard(event_types.CIRCUIT_TRIPPED, f"{event_types.CIRCUIT_TRIPPED}:{stamp}", build)


@receiver(run_killed, dispatch_uid="notify.run_killed")
def on_run_killed(sender: Any, customer_id: int, run_id: str, **kwargs: Any) -> None:
    def build() -> dict[str, Any]:
        return {"run": run_detail(customer=Customer.objects.get(pk=customer_id), run_id=run_id)}

    run = Run.objects.filter(customer_id=customer_id, run_id=run_id).values_list("pk", "changed_at").first()
    stamp = f"{run[0]}:{run[1]:%Y%m%dT%H%M%S.%f}" if run else run_id
    _emit_guard(event_types.RUN_KILLED, f"{event_types.RUN_KILLED}:{stamp}", build)


def _anomaly_data(anomaly_pk: int) -> dict[str, Any]:
    return {"anomaly": anomaly_as_dict(Anomaly.objects.select_related("customer", "pause").get(pk=anomaly_pk))}


@receiver(anomaly_opened, dispatch_uid="notify.anomaly_opened")
def on_anomaly_opened(sender: Any, anomaly_pk: int, **kwargs: Any) -> None:
    _emit_guard(event_types.ANOMALY_OPENED, f"{event_types.ANOMALY_OPENED}:{anomaly_pk}",
                lambda: _anomaly_data(anomaly_pk))


@receiver(anomaly_resolved, dispatch_uid="notify.anomaly_resolved")
def on_anomaly_resolved(sender: Any, anomaly_pk: int, **kwargs: Any) -> None:
    _emit_guard(event_types.ANOMALY_RESOLVED, f"{event_types.ANOMALY_RESOLVED}:{anomaly_pk}",
                lambda: _anomaly_data(anomaly_pk))
