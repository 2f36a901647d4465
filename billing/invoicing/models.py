"""Invoices: one per customer and billing period, drafted while the period is open, then finalized
(immutable, numbered from a gap-free sequence) and paid, voided or marked uncollectible.

A finalized invoice is never edited: every later change (a late correction, a void) is a new
document, a credit note (``kind=credit_note``) that references it. The database enforces one invoice
per (customer, period) and one number per document; the model refuses to save a changed finalized
invoice or its lines, and on PostgreSQL a trigger refuses it too (migration 0002).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NoReturn

from django.db import models

from billing.catalog.models import Plan
from billing.common.fields import ExactDecimalField
from billing.customers.models import Customer


class FinalizedInvoiceError(Exception):
    """Raised on any attempt to change a finalized invoice's figures or lines."""


class InvoiceQuerySet(models.QuerySet["Invoice"]):
    """Bulk writes get the same guard as ``save``: no frozen field of a non-draft invoice moves."""

    def update(self, **kwargs: Any) -> int:
        frozen = {name.removesuffix("_id") for name in Invoice.FROZEN} | set(Invoice.FROZEN)
        if set(kwargs) & frozen and self.exclude(status=Invoice.Status.DRAFT).exists():
            raise FinalizedInvoiceError("Finalized invoices cannot change: issue a credit note.")
        if kwargs.get("status") == Invoice.Status.DRAFT and self.exclude(status=Invoice.Status.DRAFT).exists():
            raise FinalizedInvoiceError("A finalized invoice cannot go back to draft.")
        return super().update(**kwargs)

    def delete(self) -> NoReturn:
        raise FinalizedInvoiceError("Invoices are never deleted: void them.")


class InvoiceLineQuerySet(models.QuerySet["InvoiceLine"]):
    def update(self, **kwargs: Any) -> int:
        if self.exclude(invoice__status="draft").exists():
            raise FinalizedInvoiceError("Lines of a finalized invoice cannot change.")
        return super().update(**kwargs)

    def delete(self) -> tuple[int, dict[str, int]]:
        if self.exclude(invoice__status="draft").exists():
            raise FinalizedInvoiceError("Lines of a finalized invoice cannot change.")
        return super().delete()


class Invoice(models.Model):
    class Kind(models.TextChoices):
        INVOICE = "invoice"
        CREDIT_NOTE = "credit_note"

    class Status(models.TextChoices):
        DRAFT = "draft"
        FINALIZED = "finalized"
        PAID = "paid"
        VOID = "void"
        UNCOLLECTIBLE = "uncollectible"

    # Fields that are frozen once the invoice leaves draft; only status and its timestamps move.
    FROZEN = ("customer_id", "plan_id", "kind", "period_start", "period_end", "currency", "number",
              "subtotal_minor", "credits_minor", "total_minor", "versions", "events_hash", "events_count", "lines_digest",
              "rollup_watermark", "corrects_id", "finalized_at", "tax_minor", "tax_rate", "tax_note", "due_at", "parties")

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="invoices")
    plan = models.ForeignKey(Plan, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.INVOICE)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    currency = models.CharField(max_length=3)
    number = models.CharField(max_length=32, null=True, blank=True, unique=True)
    subtotal_minor = models.BigIntegerField(default=0)
    credits_minor = models.BigIntegerField(default=0)  # prepaid credits applied (subtracted)
    total_minor = models.BigIntegerField(default=0)  # subtotal - credits + tax
    # Tax on (subtotal - credits) at ``tax_rate`` percent, rounded once (billing.catalog.money.tax_minor);
    # ``tax_note`` is the reverse-charge text when no tax is charged. ``due_at``: issue date plus the payment
    # terms, set at finalization. ``parties``: seller and buyer details as they were when it was finalized.
    # All nullable (null tax: none): SQLite adds such columns in place (see lines_digest).
    tax_minor = models.BigIntegerField(null=True, blank=True)
    tax_rate = models.DecimalField(max_digits=6, decimal_places=3, null=True, blank=True)
    tax_note = models.CharField(max_length=300, null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    parties = models.JSONField(null=True, blank=True)
    versions = models.JSONField(default=list)  # rate-card version numbers the lines were priced with
    events_hash = models.CharField(max_length=64, blank=True, default="")
    # digest of the plan, lines and figures last written: a refresh that computes the same skips the write.
    # Nullable: SQLite adds such a column in place (a rebuilt table would trip the frozen-line triggers).
    lines_digest = models.CharField(max_length=64, null=True, blank=True)
    events_count = models.BigIntegerField(default=0)
    rollup_watermark = models.BigIntegerField(default=0)
    corrects = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="credit_notes")
    reason = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)

    objects = InvoiceQuerySet.as_manager()

    class Meta:
        ordering = ["-period_start", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["customer", "period_start"], condition=models.Q(kind="invoice"),
                                    name="invoice_one_per_customer_period"),
            models.CheckConstraint(condition=models.Q(period_start__lt=models.F("period_end")), name="invoice_period_order"),
            models.CheckConstraint(condition=models.Q(status="draft") | models.Q(number__isnull=False),
                                   name="invoice_numbered_unless_draft"),
        ]
        indexes = [models.Index(fields=["status", "period_end"], name="invoice_status_end")]

    def __str__(self) -> str:
        return self.number or f"draft {self.customer_id} {self.period_start:%Y-%m}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            stored = Invoice.objects.filter(pk=self.pk).values(*self.FROZEN, "status").first()
            if stored is not None and stored["status"] != self.Status.DRAFT:
                changed = [name for name in self.FROZEN if stored[name] != getattr(self, name)]
                if changed:
                    raise FinalizedInvoiceError(f"Invoice {self} is finalized: {', '.join(changed)} cannot change.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise FinalizedInvoiceError("Invoices are never deleted: void them.")

    @property
    def is_draft(self) -> bool:
        return self.status == self.Status.DRAFT

    @property
    def status_word(self) -> str:
        """The one word a person reads for the status: on the document, the lists and the dashboard."""
        return STATUS_WORDS[self.status]


# "finalized" is the API's status; to the people paying, a finalized invoice not paid yet is "Open".
STATUS_WORDS: dict[str, str] = {Invoice.Status.DRAFT: "Draft", Invoice.Status.FINALIZED: "Open", Invoice.Status.PAID: "Paid",
                Invoice.Status.VOID: "Void", Invoice.Status.UNCOLLECTIBLE: "Uncollectible"}


class InvoiceLine(models.Model):
    """One line as priced: quantity, the unit price or tier reached, and the amount in minor units."""

    class Kind(models.TextChoices):
        BASE_FEE = "base_fee"
        CHARGE = "charge"
        CORRECTION = "correction"
        ADJUSTMENT = "adjustment"
        CREDIT = "credit"

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="lines")
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.CharField(max_length=300)
    meter = models.CharField(max_length=64, blank=True, default="")
    model = models.CharField(max_length=16, blank=True, default="")
    quantity = ExactDecimalField(default=0)
    unit_price = ExactDecimalField(null=True, blank=True)
    amount = ExactDecimalField(default=0)  # exact, before rounding
    amount_minor = models.BigIntegerField()
    detail = models.JSONField(default=dict, blank=True)  # filter, group, tier, versions, tiers, referenced events

    objects = InvoiceLineQuerySet.as_manager()

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [models.UniqueConstraint(fields=["invoice", "position"], name="invoice_line_position")]

    def __str__(self) -> str:
        return f"{self.invoice_id}#{self.position} {self.description}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if Invoice.objects.filter(pk=self.invoice_id).exclude(status=Invoice.Status.DRAFT).exists():
            raise FinalizedInvoiceError("Lines of a finalized invoice cannot change.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        if Invoice.objects.filter(pk=self.invoice_id).exclude(status=Invoice.Status.DRAFT).exists():
            raise FinalizedInvoiceError("Lines of a finalized invoice cannot change.")
        return super().delete(*args, **kwargs)

    @property
    def billed_quantity(self) -> Decimal:
        """The quantity as every reader shows it. A base fee line is one period; lines stored before base fee
        lines carried it say 0, and finalized ones stay as they were issued (never rewritten), so they are
        read as 1 here: the document, the API and ``invoice verify`` all go through this."""
        if self.kind == self.Kind.BASE_FEE and not self.quantity:
            return Decimal(1)
        return self.quantity

    @property
    def billed_unit_price(self) -> Decimal | None:
        """The unit price as every reader shows it: a base fee's is the fee (older lines stored none)."""
        if self.kind == self.Kind.BASE_FEE and self.unit_price is None:
            return self.amount
        return self.unit_price


class InvoiceSequence(models.Model):
    """Gap-free document numbers: the row is locked and bumped in the transaction that finalizes, so a
    rolled-back finalization never consumes a number."""

    name = models.CharField(max_length=16, unique=True)  # "invoice" | "credit_note"
    prefix = models.CharField(max_length=8)
    last = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}: {self.prefix}{self.last:06d}"


class PeriodClose(models.Model):
    """A billing period that has been closed: events for it are refused (422 period_closed)."""

    period_start = models.DateTimeField(unique=True)
    period_end = models.DateTimeField()
    closed_at = models.DateTimeField()  # the service's clock (finalization waits a delay after it)

    def __str__(self) -> str:
        return f"{self.period_start:%Y-%m} closed"
