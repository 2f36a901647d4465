from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models

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
