from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

external_id_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$",
    "Use 1-128 letters, digits, '_', '.', ':' or '-', starting with a letter or digit.",
)


class Customer(models.Model):
    """An operator's customer. ``external_id`` is the operator's own id: immutable once created."""

    external_id = models.CharField(max_length=128, unique=True, validators=[external_id_validator])
    name = models.CharField(max_length=200)
    email = models.EmailField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # Billing details printed on its invoices (docs/operations.md, "Invoice documents"). ``invoice_email``
    # receives finalized invoices (empty: ``email``); ``tax_rate`` is a percent (null: the plan's, else TOLLGATE_TAX_RATE);
    # reverse charge puts no tax on its invoices and prints TOLLGATE_REVERSE_CHARGE_TEXT instead.
    billing_address = models.TextField(blank=True, default="")
    tax_id = models.CharField(max_length=64, blank=True, default="")
    invoice_email = models.EmailField(blank=True, default="")
    tax_rate = models.DecimalField(max_digits=6, decimal_places=3, null=True, blank=True,
                                   validators=[MinValueValidator(0), MaxValueValidator(100)])
    tax_reverse_charge = models.BooleanField(default=False)
    # bumped with every change of the customer's guardrails (pauses, runs stopped, budgets, overrides): ingest
    # reads it with the customer and reloads its guard state only when it moved (billing.guardrails.guards)
    guard_revision = models.PositiveBigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["external_id"]

    def __str__(self) -> str:
        return self.external_id


class Project(models.Model):
    """A workspace of a customer; events may name one."""

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="projects")
    key = models.CharField(max_length=128, validators=[external_id_validator])
    name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["customer_id", "key"]
        constraints = [models.UniqueConstraint(fields=["customer", "key"], name="project_unique_key_per_customer")]

    def __str__(self) -> str:
        return f"{self.customer_id}/{self.key}"


class CustomerUser(models.Model):
    """Binds a login to exactly one customer: the self-serve dashboard shows only that customer."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="customer_user")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="users")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.user} -> {self.customer}"


class ApiKey(models.Model):
    """An API key: shown once, stored as a SHA-256 digest; looked up by its public prefix."""

    class Scope(models.TextChoices):
        INGEST = "ingest", "ingest (events, reservations)"
        READ = "read", "read (usage, balances, invoices, exports)"
        ADMIN = "admin", "admin (everything)"
        GATEWAY = "gateway", "gateway (the LLM gateway only; one customer)"

    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    scope = models.CharField(max_length=16, choices=Scope.choices)
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys",
        help_text="When set, the key can only see and write this customer.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} (tg_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
