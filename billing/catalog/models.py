from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models

from billing.catalog import ratecard

key_validator = RegexValidator(r"^[a-z0-9][a-z0-9_.-]{0,63}$", "Use 1-64 lowercase letters, digits, '_', '.' or '-'.")


class Meter(models.Model):
    """What is measured and how a period's events aggregate into one quantity.

    ``sum`` adds quantities; ``count`` adds quantities where an omitted quantity counts 1 (so a
    correction of -1 removes one); ``max`` takes the largest; ``unique_count`` counts the distinct
    values of the ``unique_by`` dimension; ``latest`` keeps the quantity of the newest event.
    """

    class Aggregation(models.TextChoices):
        SUM = "sum"
        COUNT = "count"
        MAX = "max"
        UNIQUE_COUNT = "unique_count"
        LATEST = "latest"

    key = models.CharField(max_length=64, unique=True, validators=[key_validator])
    name = models.CharField(max_length=200)
    unit = models.CharField(max_length=32, default="unit")
    aggregation = models.CharField(max_length=16, choices=Aggregation.choices)
    unique_by = models.CharField(max_length=64, blank=True, help_text="Dimension counted by unique_count.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["key"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(aggregation="unique_count") | ~models.Q(unique_by=""),
                name="meter_unique_count_needs_unique_by",
            )
        ]

    def __str__(self) -> str:
        return self.key

    @property
    def correctable(self) -> bool:
        """Signed corrections only make sense where quantities add up."""
        return self.aggregation in {self.Aggregation.SUM, self.Aggregation.COUNT}


class Plan(models.Model):
    """A plan: its prices live in rate-card versions; the plan itself only names them."""

    key = models.CharField(max_length=64, unique=True, validators=[key_validator])
    name = models.CharField(max_length=200)
    currency = models.CharField(max_length=3)
    interval = models.CharField(max_length=16, default="month")  # calendar month, UTC, [start, end)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class RateCardVersion(models.Model):
    """One immutable version of a plan's prices, in effect from ``effective_from`` until the next
    version's ``effective_from``. Any change is a new version; a stored version is never edited.

    ``definition`` is the validated, canonical catalog-file shape of the version (base fee, charges,
    limits, spend cap), as stored; everything reads it typed, as ``rate_card`` (billing/catalog/ratecard.py).
    """

    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    effective_from = models.DateTimeField()
    definition = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["plan_id", "effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "number"], name="ratecard_unique_number"),
            models.UniqueConstraint(fields=["plan", "effective_from"], name="ratecard_unique_effective_from"),
        ]

    def __str__(self) -> str:
        return f"{self.plan_id} v{self.number} from {self.effective_from:%Y-%m-%d %H:%M}"

    def save(self, *args: object, **kwargs: object) -> None:
        if not self._state.adding:
            raise ValueError("A rate-card version is immutable: publish a new version instead.")
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    @property
    def rate_card(self) -> ratecard.RateCard:
        """The version's terms, typed; parsed once per process (the version is never edited)."""
        return ratecard.of_version(self.pk, self.created_at, self.definition)


class Subscription(models.Model):
    """A customer on a plan over ``[start, end)``; ``end`` null means open-ended."""

    customer = models.ForeignKey("customers.Customer", on_delete=models.PROTECT, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    start = models.DateTimeField()
    end = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["customer_id", "start"]
        constraints = [
            models.UniqueConstraint(fields=["customer", "start"], name="subscription_unique_start"),
            models.CheckConstraint(condition=models.Q(end__isnull=True) | models.Q(end__gt=models.F("start")),
                                   name="subscription_end_after_start"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id} on {self.plan_id} from {self.start:%Y-%m-%d}"


class RateCardDraft(models.Model):
    """The one unpublished rate-card version a plan may have: what the console's editor holds, kept on the
    server so that leaving the page loses nothing. Unlike a version it may be invalid; publishing it
    validates it, makes the version and deletes the draft."""

    plan = models.OneToOneField(Plan, on_delete=models.CASCADE, related_name="draft")
    document = models.JSONField()  # the editor's catalog-file shape, as typed (not validated)
    effective_from = models.CharField(max_length=40, blank=True)  # as typed in the editor (UTC)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True)

    def __str__(self) -> str:
        return f"draft of {self.plan_id}"
