"""Finalized invoices emailed to the customer's invoice contact with the PDF attached, exactly once.

The path is the alert emails' (billing.guardrails.alerts): Django's mail connection, one claim in the
database committed before the send. ``InvoiceEmail`` has one row per invoice (unique), created when the
invoice is finalized; the task claims it (``pending`` -> ``sending``, one conditional UPDATE), renders the
PDF, sends, and records ``sent``. A retried or concurrent task finds nothing to claim. A refusal before the
server took the message puts it back to ``pending`` (retried: nothing was delivered); an error after that is
``unknown`` and never retried on its own. The beat's ``notify.sweep`` queues pending rows again whose task
was lost (``REQUEUE_AFTER``).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.template.loader import render_to_string
from django.utils import timezone

from billing.common.mail import RETRY, UNKNOWN, deliver_once
from billing.common.queue import task_named
from billing.invoicing.document import PdfUnavailable, document_context, invoice_pdf, invoice_pdf_filename
from billing.invoicing.models import Invoice
from billing.notify.models import InvoiceEmail

log = logging.getLogger(__name__)
REQUEUE_AFTER = timedelta(minutes=5)
TASK = "notify.invoice_email"


class InvoiceEmailDeferred(Exception):
    """The mail server could not take the message (nothing was sent): the row is pending again."""


def invoice_recipients(*, invoice: Invoice) -> list[str]:
    """The customer's invoice contact: ``invoice_email``, else its contact ``email``."""
    address = (invoice.customer.invoice_email or invoice.customer.email or "").strip()
    return [address] if address else []


def invoice_email_queue(*, invoice_pk: int) -> InvoiceEmail | None:
    """The invoice's email row, created once (the database's unique key), and its task queued. Only a
    finalized invoice (not a credit note, not a draft) is emailed."""
    if not Invoice.objects.filter(pk=invoice_pk, kind=Invoice.Kind.INVOICE).exclude(
            status=Invoice.Status.DRAFT).exists():
        return None
    try:
        with transaction.atomic():
            row, created = InvoiceEmail.objects.get_or_create(invoice_id=invoice_pk)
    except IntegrityError:  # a concurrent caller created it
        return InvoiceEmail.objects.get(invoice_id=invoice_pk)
    if created or row.state == InvoiceEmail.State.PENDING:
        _enqueue(row.pk)
    return row


def _enqueue(row_pk: int) -> None:
    InvoiceEmail.objects.filter(pk=row_pk).update(queued_at=timezone.now())
    try:
        task_named(TASK).delay(row_pk)
    except Exception:  # the broker is down: the sweep queues it again
        log.warning("invoice email %s not queued; the sweep retries", row_pk, exc_info=True)


def invoice_emails_sweep() -> int:
    """Queue again the pending emails whose task was lost (queued long ago, or never)."""
    stale = timezone.now() - REQUEUE_AFTER
    due = list(InvoiceEmail.objects.filter(Q(queued_at__isnull=True) | Q(queued_at__lt=stale),
                                           state=InvoiceEmail.State.PENDING).values_list("pk", flat=True)[:500])
    for pk in due:
        _enqueue(pk)
    return len(due)


def invoice_emails_resend(*, rows: QuerySet[InvoiceEmail]) -> int:
    """An operator's decision that these emails did not arrive (``unknown``, ``failed``): pending again, queued."""
    pks = list(rows.filter(state__in=[InvoiceEmail.State.UNKNOWN, InvoiceEmail.State.FAILED])
               .values_list("pk", flat=True))
    InvoiceEmail.objects.filter(pk__in=pks).update(state=InvoiceEmail.State.PENDING, error="")
    for pk in pks:
        _enqueue(pk)
    return len(pks)


def _message(invoice: Invoice, recipients: list[str]) -> EmailMessage:
    context = document_context(invoice=invoice)
    pdf = invoice_pdf(invoice=invoice, context=context)
    body_context = {**context, "document_url": f"{settings.TOLLGATE_BASE_URL.rstrip('/')}/invoices/{invoice.pk}/"}
    message = EmailMessage(
        subject=f"Invoice {invoice.number} from {context['parties']['seller']['name']}: {context['total']} "
                f"{invoice.currency}", body=render_to_string("notify/invoice_email.txt", body_context),
        from_email=settings.DEFAULT_FROM_EMAIL, to=recipients, headers={"X-Tollgate-Invoice": str(invoice.number)})
    message.attach(invoice_pdf_filename(invoice), pdf, "application/pdf")
    return message


def _set(row_pk: int, state: str, **fields: Any) -> None:
    InvoiceEmail.objects.filter(pk=row_pk, state=InvoiceEmail.State.SENDING).update(state=state, **fields)


def invoice_email_deliver(*, row_pk: int) -> str:
    """Send the invoice's email if this call wins the claim; returns the row's state after the call. Runs
    in autocommit: the claim is committed before anything is sent."""
    claimed = InvoiceEmail.objects.filter(pk=row_pk, state=InvoiceEmail.State.PENDING).update(
        state=InvoiceEmail.State.SENDING, claimed_at=timezone.now(), attempts=F("attempts") + 1)
    if not claimed:  # another worker has it, or it is done
        return InvoiceEmail.objects.filter(pk=row_pk).values_list("state", flat=True).first() or ""
    row = InvoiceEmail.objects.select_related("invoice__customer", "invoice__plan").get(pk=row_pk)
    recipients = invoice_recipients(invoice=row.invoice)
    if not recipients:
        _set(row_pk, InvoiceEmail.State.NO_RECIPIENTS)
        return InvoiceEmail.State.NO_RECIPIENTS
    try:
        message = _message(row.invoice, recipients)
    except PdfUnavailable as exc:
        _set(row_pk, InvoiceEmail.State.FAILED, error=f"no PDF: {exc}"[:2000])
        log.error("invoice email %s not sent: %s", row_pk, exc)
        return InvoiceEmail.State.FAILED
    delivery = deliver_once(message)
    if delivery.outcome == RETRY:
        _set(row_pk, InvoiceEmail.State.PENDING, error=delivery.error)
        raise InvoiceEmailDeferred(f"invoice email {row_pk}: {delivery.error}")
    if delivery.outcome == UNKNOWN:  # never risk a second email
        _set(row_pk, InvoiceEmail.State.UNKNOWN, recipients=recipients, error=delivery.error)
        log.error("invoice email %s: delivery unknown, not retried: %s", row_pk, delivery.error)
        return InvoiceEmail.State.UNKNOWN
    _set(row_pk, InvoiceEmail.State.SENT, sent_at=timezone.now(), recipients=recipients, error="")
    return InvoiceEmail.State.SENT

