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
