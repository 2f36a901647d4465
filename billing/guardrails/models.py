from __future__ import annotations

from django.db import models

from billing.common.fields import ExactDecimalField


class CreditGrant(models.Model):
    """A prepaid credit grant or top-up, as recorded beside its ledger transfer (same idempotency key)."""

    customer = models.ForeignKey("customers.Customer", on_delete=models.PROTECT, related_name="credit_grants")
    idempotency_key = models.CharField(max_length=128)
    amount = ExactDecimalField()
    currency = models.CharField(max_length=3)
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["customer", "idempotency_key"], name="credit_grant_unique_key")]

    def __str__(self) -> str:
        return f"{self.customer_id}: {self.amount} {self.currency} ({self.idempotency_key})"


class Reservation(models.Model):
    """An estimate held before an expensive call (reserve, then settle): pending ledger transfers with
    a timeout, counted against the limits until settled, released or expired."""

    class State(models.TextChoices):
        PENDING = "pending"
        SETTLED = "settled"
        RELEASED = "released"
        EXPIRED = "expired"

    customer = models.ForeignKey("customers.Customer", on_delete=models.PROTECT, related_name="reservations")
    reservation_id = models.CharField(max_length=128)
    meter = models.ForeignKey("catalog.Meter", on_delete=models.PROTECT, related_name="+")
    quantity = ExactDecimalField()
    dimensions = models.JSONField(default=dict, blank=True)
    ttl_seconds = models.PositiveIntegerField()
    expires_at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    legs = models.JSONField(default=dict, blank=True)  # leg -> {"id": pending transfer id (str), "amount": int (str)}
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["customer", "reservation_id"], name="reservation_unique_id")]
        indexes = [models.Index(fields=["state", "expires_at"], name="reservation_open")]

    def __str__(self) -> str:
        return f"{self.customer_id}:{self.reservation_id} ({self.state})"
