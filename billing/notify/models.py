"""Outbound webhooks: the operator's endpoints, the events Tollgate emits, one delivery per (event,
endpoint). Not Stripe's inbound webhooks (billing.payments.webhooks)."""

from __future__ import annotations

from django.db import models


class WebhookEndpoint(models.Model):
    """Where the operator wants events POSTed. ``secret`` signs every delivery: the API shows it once,
    at creation. Deleting sets ``deleted_at`` (the deliveries stay listed in the admin)."""

    public_id = models.CharField(max_length=40, unique=True)  # "we_<hex>"
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list)  # event types subscribed to
    description = models.CharField(max_length=500, blank=True, default="")
    secret = models.CharField(max_length=100)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.public_id} {self.url}"


class WebhookEvent(models.Model):
    """Something that happened, stored once per natural key (``key``, e.g. ``invoice.paid:42``) with the
    stable ``public_id`` every delivery and retry carries."""

    public_id = models.CharField(max_length=40, unique=True)  # "evt_<hex>"
    key = models.CharField(max_length=200, unique=True)
    type = models.CharField(max_length=64)
    created = models.DateTimeField()
    data = models.JSONField(default=dict)

    class Meta:
        ordering = ["created", "pk"]

    def __str__(self) -> str:
        return f"{self.public_id} {self.type}"


class WebhookDelivery(models.Model):
    """One event to one endpoint: pending until a 2xx answer (``delivered``) or ``retry_until`` passes
    (``failed``); ``cancelled`` when its endpoint was deleted first. ``leased_until`` keeps two workers
    from sending it at once; ``queued_at`` keeps the sweep from queueing it again while a task waits."""

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"
        CANCELLED = "cancelled"

    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)  # null: due now
    retry_until = models.DateTimeField()
    queued_at = models.DateTimeField(null=True, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveIntegerField(null=True, blank=True)  # the last HTTP status, null: no answer
    last_error = models.TextField(blank=True, default="")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [models.UniqueConstraint(fields=["event", "endpoint"], name="webhook_delivery_once")]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="webhook_delivery_due")]

    def __str__(self) -> str:
        return f"{self.event_id} -> {self.endpoint_id} ({self.state})"


class InvoiceEmail(models.Model):
    """The email of one finalized invoice to the customer's invoice contact, with its PDF attached. One row per
    invoice (the idempotency key, unique in the database); a worker sends only after it moved the row from
    ``pending`` to ``sending`` with one conditional UPDATE, so retried or concurrent tasks send it once."""

    class State(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        SENT = "sent"
        UNKNOWN = "unknown"  # the server may have taken it: never sent again on its own
        NO_RECIPIENTS = "no_recipients"
        FAILED = "failed"  # nothing sent (the PDF could not be rendered); an operator may reset it to pending

    invoice = models.OneToOneField("invoicing.Invoice", on_delete=models.PROTECT, related_name="email")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    recipients = models.JSONField(default=list, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    queued_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["state", "queued_at"], name="invoice_email_due")]

    def __str__(self) -> str:
        return f"invoice {self.invoice_id} email ({self.state})"
