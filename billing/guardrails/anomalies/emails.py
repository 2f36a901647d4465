"""The emails when an anomaly opens: one to the operator's staff (``TOLLGATE_OPERATOR_EMAILS``), one to the
customer's contacts (as soft-limit alerts: the customer's email and its dashboard users'). At most once per
anomaly: the row is claimed (``emailed_at``) by one conditional UPDATE before anything is sent; a send that
fails is logged and not retried (the review queue shows the anomaly anyway)."""

from __future__ import annotations

import logging
from decimal import Decimal

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.template.loader import render_to_string
from django.utils import timezone

from billing.common.fields import decimal_to_text
from billing.guardrails.alerts import alert_recipients
from billing.guardrails.anomalies.baseline import minutes
from billing.guardrails.anomalies.selectors import anomaly_multiple
from billing.guardrails.models import Anomaly

log = logging.getLogger(__name__)


def operator_emails() -> list[str]:
    """``TOLLGATE_OPERATOR_EMAILS``, else the addresses of Django's ``ADMINS``."""
    admins = [entry[1] for entry in getattr(settings, "ADMINS", []) if isinstance(entry, tuple | list)]
    return list(settings.TOLLGATE_OPERATOR_EMAILS) or admins


def _message(anomaly: Anomaly, *, for_operator: bool, to: list[str]) -> EmailMessage:
    base = settings.TOLLGATE_BASE_URL.rstrip("/")
    expected = anomaly.baseline_rate * minutes(anomaly.window_end - anomaly.window_start)
    context = {
        "for_operator": for_operator, "customer": anomaly.customer, "currency": anomaly.currency,
        "window_minutes": anomaly.window_minutes, "window_start": anomaly.window_start,
        "window_end": anomaly.window_end, "window_spend": decimal_to_text(anomaly.window_spend.quantize(Decimal("0.01"))),
        "expected": decimal_to_text(expected.quantize(Decimal("0.01"))),
        "multiple": f"{anomaly_multiple(anomaly):.1f}", "paused": anomaly.pause_id is not None,
        "review_url": f"{base}/console/anomalies/{anomaly.public_id}/", "dashboard_url": f"{base}/dashboard/",
    }
    who = f"{anomaly.customer.external_id}: " if for_operator else ""
    what = "paused after a spend anomaly" if anomaly.pause_id else "unusual spend detected"
    return EmailMessage(subject=f"[Tollgate] {who}{what}", body=render_to_string("guardrails/anomaly_email.txt", context),
                        from_email=settings.DEFAULT_FROM_EMAIL, to=to,
                        headers={"X-Tollgate-Anomaly": anomaly.public_id})


def anomaly_emails_send(*, anomaly_pk: int) -> int:
    """Send the anomaly's emails if this call wins the claim; returns the number of messages sent."""
    if not Anomaly.objects.filter(pk=anomaly_pk, emailed_at__isnull=True).update(emailed_at=timezone.now()):
        return 0
    anomaly = Anomaly.objects.select_related("customer").get(pk=anomaly_pk)
    messages = []
    operators = operator_emails()
    if operators:
        messages.append(_message(anomaly, for_operator=True, to=operators))
    customer = alert_recipients(customer=anomaly.customer)
    if customer:
        messages.append(_message(anomaly, for_operator=False, to=customer))
    if not messages:
        return 0
    try:
        return get_connection(fail_silently=False).send_messages(messages) or 0
    except Exception:
        log.exception("the emails of anomaly %s were not sent", anomaly.public_id)
        return 0
