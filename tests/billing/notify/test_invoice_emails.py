"""Finalized invoices are emailed to the customer's invoice contact with the PDF attached, exactly once."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.db import IntegrityError, transaction
from pypdf import PdfReader

from billing.catalog.services import catalog_import
from billing.invoicing import services
from billing.invoicing.models import Invoice
from billing.notify.invoice_emails import InvoiceEmailDeferred, invoice_email_deliver, invoice_email_queue
from billing.notify.models import InvoiceEmail
from billing.usage.rollups import rollup_until_current
from tests import factories

UTC = timezone.utc
OCT = datetime(2026, 10, 1, tzinfo=UTC)
CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
plans:
  - {key: pro, name: Pro, currency: USD, effective_from: "2024-01-01T00:00:00Z", base_fee: "10.00",
     charges: [{meter: llm_tokens, model: per_unit, unit_price: "0.01"}]}
"""


@pytest.fixture
def pro(acme: Any) -> Any:
    acme.email, acme.invoice_email = "dev@acme.example", "ap@acme.example"
    acme.save()
    catalog_import(text=CATALOG, actor="t")
    factories.subscribe(acme, "pro", start=OCT)
    factories.ingest(factories.event("a", "2026-10-10T00:00:00Z", "150", "llm_tokens"),
                     now=datetime(2026, 10, 12, tzinfo=UTC))
    return acme


def finalize() -> Invoice:
    at = datetime(2026, 11, 1, 1, tzinfo=UTC)
    services.periods_close(now=at)
    rollup_until_current(now=at + timedelta(days=1))
    (invoice,) = services.periods_finalize(now=at + timedelta(days=1))
    return invoice


@pytest.mark.django_db(transaction=True)
def test_a_finalized_invoice_is_emailed_once_to_the_invoice_contact_with_its_pdf(
        pro: Any, celery_eager: Any, mailoutbox: Any) -> None:
    invoice = finalize()
    assert len(mailoutbox) == 1
    message = mailoutbox[0]
    assert message.to == ["ap@acme.example"] and str(invoice.number) in message.subject
    assert invoice.due_at is not None and invoice.due_at.strftime("%Y-%m-%d") in message.body
    ((name, content, kind),) = message.attachments
    assert name == f"{invoice.number}.pdf" and kind == "application/pdf"
    text = PdfReader(io.BytesIO(content)).pages[0].extract_text()
    assert str(invoice.number) in text and "11.50" in text
    row = InvoiceEmail.objects.get(invoice=invoice)
    assert row.state == "sent" and row.recipients == ["ap@acme.example"] and row.attempts == 1
    # finalizing again, the signal again, the task again: nothing more is sent
    services.invoice_finalize(invoice=invoice, now=datetime(2026, 11, 3, tzinfo=UTC))
    invoice_email_queue(invoice_pk=invoice.pk)
    assert invoice_email_deliver(row_pk=row.pk) == "sent"
    assert len(mailoutbox) == 1
    with pytest.raises(IntegrityError), transaction.atomic():  # the database holds one email per invoice
        InvoiceEmail.objects.create(invoice=invoice)


@pytest.mark.django_db
def test_a_mail_server_that_took_nothing_is_retried_and_the_email_still_goes_once(
        pro: Any, mailoutbox: Any, settings: Any, django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        invoice = finalize()
    row = InvoiceEmail.objects.get(invoice=invoice)  # queued by the finalization (the task not run here)
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 1, 2  # refused
    with pytest.raises(InvoiceEmailDeferred):
        invoice_email_deliver(row_pk=row.pk)
    row.refresh_from_db()
    assert row.state == "pending" and "not sent" in row.error
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert invoice_email_deliver(row_pk=row.pk) == "sent"
    assert invoice_email_deliver(row_pk=row.pk) == "sent"
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_without_an_invoice_contact_nothing_is_sent_and_drafts_are_never_emailed(
        acme: Any, mailoutbox: Any, django_capture_on_commit_callbacks: Any) -> None:
    catalog_import(text=CATALOG, actor="t")
    factories.subscribe(acme, "pro", start=OCT)
    draft = services.invoice_draft_refresh(customer=acme, period_start=OCT)
    assert draft is not None and invoice_email_queue(invoice_pk=draft.pk) is None
    with django_capture_on_commit_callbacks(execute=True):
        invoice = finalize()
    row = InvoiceEmail.objects.get(invoice=invoice)
    assert invoice_email_deliver(row_pk=row.pk) == "no_recipients" and mailoutbox == []
