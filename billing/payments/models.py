"""What Tollgate knows about its Stripe counterparts: customer ids, invoice pushes, reported meter usage,
received webhook events. Nothing here changes a Tollgate bill: Tollgate computes, Stripe collects.

Every sync row has the same small state machine, shown in the console:
``pending`` (to do, or a retryable error such as an outage: the beat task retries it), ``synced``,
``failed`` (Stripe refused the request: an operator looks at ``last_error`` and retries).
"""

from __future__ import annotations

from django.db import models

from billing.catalog.models import Meter, Plan
from billing.common.fields import ExactDecimalField
from billing.customers.models import Customer
from billing.invoicing.models import Invoice


class SyncState(models.TextChoices):
    PENDING = "pending"
    SYNCED = "synced"
    FAILED = "failed"


class SyncRow(models.Model):
    state = models.CharField(max_length=16, choices=SyncState.choices, default=SyncState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)  # null: due now
    # A lease: the worker pushing the row holds it until then, so two workers never push the same row.
    leased_until = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class BillingMode(models.TextChoices):
    TOLLGATE_INVOICES = "tollgate_invoices"  # Tollgate's invoice, collected by Stripe
    STRIPE_METERS = "stripe_meters"  # Stripe bills from its Billing Meters
    PAYSTACK_INVOICES = "paystack_invoices"  # Tollgate's invoice, collected by Paystack (a payment link)


class PlanBilling(models.Model):
    """How a plan is billed and who collects (docs/payments.md): the provider is chosen per plan, so every
    invoice of a plan goes to one provider. A plan without a row: Tollgate invoices, collected by Stripe."""

    plan = models.OneToOneField(Plan, on_delete=models.CASCADE, related_name="stripe_billing")
    mode = models.CharField(max_length=32, choices=BillingMode.choices, default=BillingMode.TOLLGATE_INVOICES)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.plan_id}: {self.mode}"


class StripeCustomer(SyncRow):
    """The Stripe customer of a Tollgate customer. ``synced_version`` is the customer's ``updated_at``
    that Stripe has seen: a later one means an update to push."""

    customer = models.OneToOneField(Customer, on_delete=models.PROTECT, related_name="stripe")
    stripe_customer_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    synced_version = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)  # deleted in Stripe (customer.deleted)
    # the customer's default payment method in Stripe ('' none): invoices are charged to it, or else sent
    # to be paid by the due date (docs/payments.md "Payment methods")
    default_payment_method = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="stripe_customer_due")]

    def __str__(self) -> str:
        return f"{self.customer_id} -> {self.stripe_customer_id or '?'} ({self.state})"


class StripeInvoiceSync(SyncRow):
    """A finalized Tollgate invoice pushed to Stripe as one Stripe invoice (mode tollgate_invoices).

    ``stripe_status`` follows Stripe's invoice status from our pushes and webhooks; it only moves
    forward (draft -> open -> paid|void|uncollectible), so late or reordered webhooks cannot undo it."""

    invoice = models.OneToOneField(Invoice, on_delete=models.PROTECT, related_name="stripe_sync")
    stripe_invoice_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    stripe_status = models.CharField(max_length=16, blank=True, default="")
    stripe_total_minor = models.BigIntegerField(null=True, blank=True)
    hosted_invoice_url = models.URLField(max_length=500, blank=True, default="")
    payment_failures = models.PositiveIntegerField(default=0)  # Stripe's attempt count of the latest failure
    last_payment_error = models.TextField(blank=True, default="")  # the decline reason; cleared when paid or void
    # ``created`` of the newest webhook event applied: an older failure arriving late changes nothing
    stripe_changed_at = models.BigIntegerField(null=True, blank=True)
    # the daily reconciliation (reconcile.py): what differed from Stripe at its last check ('' nothing)
    drift = models.TextField(blank=True, default="")
    reconciled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="stripe_invoice_due")]

    def __str__(self) -> str:
        return f"invoice {self.invoice_id} -> {self.stripe_invoice_id or '?'} ({self.state})"


class StripeInvoiceItem(models.Model):
    """One pushed line, recorded as soon as Stripe answers, so a retry never pushes it again."""

    sync = models.ForeignKey(StripeInvoiceSync, on_delete=models.CASCADE, related_name="items")
    position = models.IntegerField()  # the invoice line's position; -1 for the applied-credits item, -2 for tax
    stripe_item_id = models.CharField(max_length=64, unique=True)
    amount_minor = models.BigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["sync", "position"], name="stripe_item_one_per_line")]

    def __str__(self) -> str:
        return f"{self.sync_id}#{self.position} {self.stripe_item_id}"


class StripeMeter(models.Model):
    """The Stripe Billing Meter a Tollgate meter reports to (mode stripe_meters)."""

    meter = models.OneToOneField(Meter, on_delete=models.PROTECT, related_name="stripe")
    stripe_meter_id = models.CharField(max_length=64, unique=True)
    event_name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.meter_id} -> {self.stripe_meter_id}"


class MeterUsageReport(SyncRow):
    """The usage of one (customer, meter, hour) as reported to Stripe.

    ``total`` is what Stripe should hold; ``reported_total`` what it holds after the last successful
    push; ``revision`` numbers the pushes (each one's meter-event identifier ends in it);
    ``live_identifiers`` are the events Stripe currently counts (a decrease cancels them)."""

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+")
    hour = models.DateTimeField()
    total = ExactDecimalField()
    reported_total = ExactDecimalField(default=0)
    revision = models.PositiveIntegerField(default=0)
    live_identifiers = models.JSONField(default=list)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["customer", "meter", "hour"], name="meter_report_one_per_hour")]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="meter_report_due")]

    def __str__(self) -> str:
        return f"{self.customer_id}/{self.meter_id}/{self.hour:%Y-%m-%d %H}h ({self.state})"


class StripeEvent(models.Model):
    """A received, verified webhook event: stored once by Stripe's id, processed by a task."""

    class Status(models.TextChoices):
        RECEIVED = "received"
        PROCESSED = "processed"
        IGNORED = "ignored"  # acknowledged, no handler for its type
        FAILED = "failed"

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    created = models.BigIntegerField()  # Stripe's timestamp of the event
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVED)
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "received_at"], name="stripe_event_status")]

    def __str__(self) -> str:
        return f"{self.event_id} {self.type} ({self.status})"


class PaystackPayment(SyncRow):
    """A finalized Tollgate invoice of a Paystack plan: its payment link (a transaction initialized with the
    invoice's total). ``reference`` is ours, unique per Paystack integration, and names the invoice in
    ``charge.success``; ``paid_at`` is set by that event."""

    invoice = models.OneToOneField(Invoice, on_delete=models.PROTECT, related_name="paystack")
    reference = models.CharField(max_length=100, null=True, blank=True, unique=True)
    authorization_url = models.URLField(max_length=500, blank=True, default="")
    access_code = models.CharField(max_length=100, blank=True, default="")
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="paystack_payment_due")]

    def __str__(self) -> str:
        return f"invoice {self.invoice_id} -> {self.reference or '?'} ({self.state})"


class PaystackCustomer(models.Model):
    """A Tollgate customer's Paystack customer (``CUS_...``), made before its first payment link so one
    customer's transactions, cards and refunds are one record in Paystack's dashboard; and the card Paystack
    may charge again (the newest reusable authorization a ``charge.success`` brought). Paystack keys its
    customers by email: a changed invoice email is a new Paystack customer, and the old card is forgotten.
    Two Tollgate customers with one email share a Paystack customer, so the code is not unique."""

    customer = models.OneToOneField(Customer, on_delete=models.PROTECT, related_name="paystack")
    email = models.EmailField()
    customer_code = models.CharField(max_length=64, db_index=True)
    authorization_code = models.CharField(max_length=100, blank=True, default="")
    card = models.CharField(max_length=120, blank=True, default="")  # "mastercard ending 8877, expires 08/2020"
    card_at = models.DateTimeField(null=True, blank=True)  # when that card paid: an older event never replaces it
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.customer_id} -> {self.customer_code}"


class PaystackEvent(models.Model):
    """A verified Paystack webhook event, stored once and processed once. Paystack's events carry no id of
    their own: ``event_key`` is the event type and its object's id (``charge.success:302961``)."""

    event_key = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=StripeEvent.Status.choices, default=StripeEvent.Status.RECEIVED)
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "received_at"], name="paystack_event_status")]

    def __str__(self) -> str:
        return f"{self.event_key} ({self.status})"
