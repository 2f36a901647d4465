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


class AlertThreshold(models.Model):
    """A soft-limit alert threshold: ``percent`` of a hard limit (``meter:<key>``) or of the spend cap
    (``spend_cap``). Either a plan-level default set by the operator (``plan``) or a customer's own
    (``customer``): exactly one of the two. With no threshold for a target on the plan, 80% applies
    (billing.guardrails.selectors.alert_thresholds_effective); a customer's own come on top."""

    SPEND_CAP = "spend_cap"
    METER_PREFIX = "meter:"

    plan = models.ForeignKey("catalog.Plan", null=True, blank=True, on_delete=models.CASCADE,
                             related_name="alert_thresholds")
    customer = models.ForeignKey("customers.Customer", null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="alert_thresholds")
    target = models.CharField(max_length=80, help_text='"meter:<meter key>" or "spend_cap"')
    percent = ExactDecimalField(help_text="Of the hard limit or spend cap, above 0 and at most 100.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["target", "percent"]
        constraints = [
            models.CheckConstraint(condition=models.Q(plan__isnull=False, customer__isnull=True)
                                   | models.Q(plan__isnull=True, customer__isnull=False),
                                   name="alert_threshold_plan_xor_customer"),
            models.UniqueConstraint(fields=["plan", "target", "percent"], condition=models.Q(plan__isnull=False),
                                    name="alert_threshold_unique_plan"),
            models.UniqueConstraint(fields=["customer", "target", "percent"], condition=models.Q(customer__isnull=False),
                                    name="alert_threshold_unique_customer"),
        ]

    def __str__(self) -> str:
        owner = f"plan {self.plan_id}" if self.plan_id else f"customer {self.customer_id}"
        return f"{owner}: {self.target} at {self.percent}%"


class Alert(models.Model):
    """One soft-limit alert: a threshold crossed by a customer in a period. The unique constraint on
    (customer, period_start, target, percent) is what guarantees one alert, and so at most one email, per
    threshold, customer and period, whatever the retries and concurrent workers.

    ``state``: ``pending`` (recorded, email not sent yet) -> ``sending`` (one worker claimed it with a
    conditional UPDATE) -> ``sent``. A send refused before the server took the message goes back to
    ``pending`` (retried). Anything else leaves ``unknown`` and is never retried: at most once
    (docs/operations.md, "Alert emails"). ``no_recipients`` when the customer has no address."""

    class State(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        SENT = "sent"
        UNKNOWN = "unknown"
        NO_RECIPIENTS = "no_recipients"

    customer = models.ForeignKey("customers.Customer", on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    target = models.CharField(max_length=80)
    percent = ExactDecimalField()
    limit = ExactDecimalField()  # the hard limit or spend cap when crossed
    used = ExactDecimalField()  # the period's usage (or spend) seen when the crossing was detected
    unit = models.CharField(max_length=32, blank=True)  # the meter's unit, or the plan's currency
    crossed_at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    recipients = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["period_start", "target", "percent"]
        constraints = [models.UniqueConstraint(fields=["customer", "period_start", "target", "percent"],
                                               name="alert_one_per_threshold_and_period")]
        indexes = [models.Index(fields=["state", "claimed_at"], name="alert_state")]

    def __str__(self) -> str:
        return f"{self.customer_id} {self.period_start:%Y-%m} {self.target} {self.percent}% ({self.state})"


class CustomerOverride(models.Model):
    """A customer's own terms, replacing its plan's (contract: "Customer overrides"): hard and soft limits
    per meter, the spend cap, run limits and anomaly settings. ``terms`` holds only what is overridden:
    {"limits": [{"meter", "soft"?, "hard"}]?, "spend_cap"?: str|None, "run_limits"?: {...}, "anomaly"?: {...}}."""

    customer = models.OneToOneField("customers.Customer", on_delete=models.CASCADE, related_name="override")
    terms = models.JSONField(default=dict, blank=True)
    revision = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"override of customer {self.customer_id} (r{self.revision})"


class Pause(models.Model):
    """A kill switch above the run: while active (``lifted_at`` empty) it refuses every event and reservation
    of its customer, or of one of its projects, with ``402 paused``."""

    class Scope(models.TextChoices):
        CUSTOMER = "customer"
        PROJECT = "project"

    class Source(models.TextChoices):
        OPERATOR = "operator"  # the API (admin key) or the console
        CUSTOMER = "customer"  # a customer user from the dashboard
        ANOMALY = "anomaly"  # an anomaly whose action is pause: lifted only by an operator

    pause_id = models.CharField(max_length=40, unique=True)
    customer = models.ForeignKey("customers.Customer", on_delete=models.CASCADE, related_name="pauses")
    scope = models.CharField(max_length=16, choices=Scope.choices)
    project = models.ForeignKey("customers.Project", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    reason = models.CharField(max_length=200)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.OPERATOR)
    created_by = models.CharField(max_length=160, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.CharField(max_length=160, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["customer", "lifted_at"], name="pause_active_idx")]

    def __str__(self) -> str:
        return self.pause_id


class Run(models.Model):
    """An agent run (events carrying ``trace.run_id``) once something happened to it: tripped by a circuit
    breaker, killed, released. A run never seen here is open; its counters live in the ledger."""

    class State(models.TextChoices):
        OPEN = "open"
        TRIPPED = "tripped"
        KILLED = "killed"

    customer = models.ForeignKey("customers.Customer", on_delete=models.CASCADE, related_name="runs")
    run_id = models.CharField(max_length=128)
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    breaker = models.CharField(max_length=32, blank=True)  # max_steps | max_spend | max_duration_seconds | kill
    started_at = models.DateTimeField(null=True, blank=True)  # the first event's timestamp (run duration)
    changed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["customer", "run_id"], name="run_unique_per_customer")]

    def __str__(self) -> str:
        return f"{self.run_id} ({self.state})"


class Budget(models.Model):
    """A spending ceiling below the customer (contract: "Budgets"): on a project, one dimension value (an
    end user), an API key, or their combination; per month or per day; blocking or alert-only."""

    class Period(models.TextChoices):
        MONTH = "month"
        DAY = "day"

    class Action(models.TextChoices):
        BLOCK = "block"
        ALERT = "alert"

    customer = models.ForeignKey("customers.Customer", on_delete=models.CASCADE, related_name="budgets")
    budget_id = models.CharField(max_length=128)
    scope = models.JSONField(default=dict)  # {"project"?: id, "dimension"?: {key: value}, "api_key"?: prefix}
    amount = models.DecimalField(max_digits=38, decimal_places=12)
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.MONTH)
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.BLOCK)
    soft_percent = models.DecimalField(max_digits=6, decimal_places=2, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["budget_id"]
        constraints = [models.UniqueConstraint(fields=["customer", "budget_id"], name="budget_unique_per_customer")]

    def __str__(self) -> str:
        return self.budget_id


class SpendWatch(models.Model):
    """Anomaly detection's memory of one customer's spend in one currency (docs/anomalies.md): the spend-watch
    counter at the start of the clock hour being measured, and the spend rate (per minute) of each complete
    hour of the last eight days, from which the baseline is taken. One row per (customer, currency), updated
    by the sampler under a row lock."""

    customer = models.ForeignKey("customers.Customer", on_delete=models.CASCADE, related_name="+")
    currency = models.CharField(max_length=3)
    started_at = models.DateTimeField()  # the first sample
    hour_at = models.DateTimeField()  # the first sample of the hour being measured
    hour_spent = ExactDecimalField()  # the counter then
    hours = models.JSONField(default=list, blank=True)  # [[hour start (unix seconds), rate per minute (str)], ...]
    sampled_at = models.DateTimeField()
    spent = ExactDecimalField()  # the counter at the last sample

    class Meta:
        constraints = [models.UniqueConstraint(fields=["customer", "currency"], name="spend_watch_unique")]

    def __str__(self) -> str:
        return f"spend watch of customer {self.customer_id} ({self.currency})"


class SpendSample(models.Model):
    """The spend-watch counter as the sampler read it, at most once per minute per customer and currency
    (the first read of each minute): a window's spend is the counter now less the sample at its start. Kept
    for the window's length and a little more."""

    customer = models.ForeignKey("customers.Customer", on_delete=models.CASCADE, related_name="+")
    currency = models.CharField(max_length=3)
    minute = models.DateTimeField()  # ``at`` truncated to the minute: one sample per minute
    at = models.DateTimeField()
    spent = ExactDecimalField()  # cumulative, in the currency's major unit

    class Meta:
        constraints = [models.UniqueConstraint(fields=["customer", "currency", "minute"],
                                               name="spend_sample_one_per_minute")]

    def __str__(self) -> str:
        return f"{self.customer_id} {self.currency} {self.at:%Y-%m-%d %H:%M:%S}: {self.spent}"


class Anomaly(models.Model):
    """A spend-velocity anomaly (contract: "Anomalies"): the customer's spend in the window exceeded its
    ``min_spend`` and ``factor`` times its baseline rate. ``idempotency_key`` (the customer, the currency and
    the window's first sample) makes one detection one row whatever the concurrent samplers; the partial
    unique constraint keeps at most one open per customer and currency, so a burst opens exactly one."""

    class Status(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"

    class Resolution(models.TextChoices):
        RESUME = "resume"
        KEEP_PAUSED = "keep_paused"

    public_id = models.CharField(max_length=40, unique=True)
    idempotency_key = models.CharField(max_length=200, unique=True)
    customer = models.ForeignKey("customers.Customer", on_delete=models.PROTECT, related_name="anomalies")
    currency = models.CharField(max_length=3)
    opened_at = models.DateTimeField()
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    window_spend = ExactDecimalField()
    baseline_rate = ExactDecimalField()  # per minute, in the currency
    factor = ExactDecimalField()
    min_spend = ExactDecimalField()
    window_minutes = models.PositiveIntegerField()
    action = models.CharField(max_length=8)  # alert | pause, as the terms said when it opened
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    resolution = models.CharField(max_length=16, choices=Resolution.choices, blank=True)
    note = models.TextField(blank=True)
    resolved_by = models.CharField(max_length=160, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    pause = models.ForeignKey(Pause, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # the spend per sample interval from two windows before the window's end to it, as opened (the chart):
    # [[interval start, interval end (unix seconds), spend (str)], ...]
    series = models.JSONField(default=list, blank=True)
    emailed_at = models.DateTimeField(null=True, blank=True)  # claimed for the emails (sent at most once)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(fields=["customer", "currency"], condition=models.Q(status="open"),
                                    name="anomaly_one_open_per_customer"),
            models.CheckConstraint(condition=models.Q(status="open", resolved_at__isnull=True)
                                   | models.Q(status="resolved", resolved_at__isnull=False),
                                   name="anomaly_resolved_has_time"),
        ]
        indexes = [models.Index(fields=["status", "opened_at"], name="anomaly_status_idx")]

    def __str__(self) -> str:
        return self.public_id
