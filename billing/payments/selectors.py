"""Reads of the Stripe integration: what the operator sees in the console."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count

from billing.customers.models import Customer
from billing.invoicing.models import Invoice
from billing.payments.models import (
    BillingMode,
    MeterUsageReport,
    PaystackCustomer,
    PaystackEvent,
    PaystackPayment,
    PlanBilling,
    StripeCustomer,
    StripeEvent,
    StripeInvoiceSync,
    SyncRow,
    SyncState,
)


@dataclass(frozen=True)
class InvoiceSyncView:
    invoice: Invoice
    mode: str
    sync: StripeInvoiceSync | None

    @property
    def state(self) -> str:
        """pending | synced | failed, or: not pushed (a draft, a credit note), stripe meters (Stripe bills it)."""
        if self.sync is not None:
            return self.sync.state
        if self.invoice.status == Invoice.Status.DRAFT or self.invoice.kind != Invoice.Kind.INVOICE:
            return "not pushed"
        if self.mode == BillingMode.STRIPE_METERS:
            return "stripe meters"
        return "pending"

    @property
    def retryable(self) -> bool:
        return self.state in ("pending", "failed") and self.mode == BillingMode.TOLLGATE_INVOICES


def invoice_sync_list(*, state: str = "", customer_external_id: str = "", limit: int = 200) -> list[InvoiceSyncView]:
    invoices = Invoice.objects.select_related("customer", "plan", "stripe_sync").order_by("-id")
    if customer_external_id:
        invoices = invoices.filter(customer__external_id=customer_external_id)
    if state in ("pending", "synced", "failed"):
        invoices = invoices.filter(stripe_sync__state=state)
    modes = dict(PlanBilling.objects.values_list("plan_id", "mode"))
    return [InvoiceSyncView(invoice=inv, mode=modes.get(inv.plan_id, BillingMode.TOLLGATE_INVOICES) if inv.plan_id else
                            BillingMode.TOLLGATE_INVOICES, sync=getattr(inv, "stripe_sync", None))
            for inv in invoices[:limit]]


def plans_billed_by_stripe(*, plan_ids: Iterable[int | None]) -> set[int]:
    """Of these plans, those whose usage Stripe bills from its Billing Meters (mode stripe_meters): their
    Tollgate invoices are statements, the customer pays Stripe's invoice, so they are never "not paid"."""
    wanted = {pk for pk in plan_ids if pk is not None}
    return set(PlanBilling.objects.filter(plan_id__in=wanted, mode=BillingMode.STRIPE_METERS).values_list("plan_id", flat=True))


def payment_links(*, invoices: Iterable[Invoice]) -> dict[int, str]:
    """Where the customer pays each unpaid invoice: Stripe's hosted invoice page (while Stripe is collecting
    it) or Paystack's checkout (the invoice's payment link). Invoices with neither are absent."""
    unpaid = [inv.pk for inv in invoices if inv.status in (Invoice.Status.FINALIZED, Invoice.Status.UNCOLLECTIBLE)]
    links: dict[int, str] = dict(
        StripeInvoiceSync.objects.filter(invoice_id__in=unpaid, stripe_status__in=("open", "uncollectible"))
        .exclude(hosted_invoice_url="").values_list("invoice_id", "hosted_invoice_url"))
    links.update(PaystackPayment.objects.filter(invoice_id__in=unpaid, paid_at__isnull=True)
                 .exclude(authorization_url="").values_list("invoice_id", "authorization_url"))
    return links


@dataclass(frozen=True)
class PaymentMethodState:
    enabled: bool  # Stripe is configured: the customer can save a card
    has_default: bool  # invoices are charged to it; otherwise sent with a due date
    days_until_due: int
    paystack_card: str = ""  # the card Paystack may charge again, for customers of Paystack plans


def payment_method_state(*, customer: Customer) -> PaymentMethodState:
    card = StripeCustomer.objects.filter(customer=customer).values_list("default_payment_method", flat=True).first()
    paystack_card = PaystackCustomer.objects.filter(customer=customer).values_list("card", flat=True).first()
    return PaymentMethodState(enabled=bool(settings.STRIPE_SECRET_KEY), has_default=bool(card),
                              days_until_due=int(settings.STRIPE_DAYS_UNTIL_DUE), paystack_card=paystack_card or "")


def sync_summary() -> dict[str, dict[str, int]]:
    """Counts per state of every kind of sync row, and of webhook events per status."""
    summary: dict[str, dict[str, int]] = {}
    rows: tuple[tuple[str, type[SyncRow]], ...] = (
        ("customers", StripeCustomer), ("invoices", StripeInvoiceSync), ("meter hours", MeterUsageReport),
        ("paystack links", PaystackPayment))
    for name, model in rows:
        summary[name] = dict(model._default_manager.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
    summary["reconciliation"] = {"checked": StripeInvoiceSync.objects.filter(reconciled_at__isnull=False).count(),
                                 "drift": StripeInvoiceSync.objects.exclude(drift="").count()}
    for name, events in (("webhook events", StripeEvent), ("paystack events", PaystackEvent)):
        summary[name] = dict(events._default_manager.values_list("status").annotate(n=Count("id"))
                             .values_list("status", "n"))
    return summary


@dataclass(frozen=True)
class SyncRowView:
    kind: str  # the operator's retry key (billing.payments.operator.RETRYABLE)
    pk: int
    what: str
    state: str
    attempts: int
    last_error: str


def sync_rows_unsettled(*, limit: int = 100) -> list[SyncRowView]:
    """Customers, meter hours and Paystack links that failed or wait for a retry (invoices have their own
    table), failed first."""
    found: list[SyncRowView] = []
    kinds: tuple[tuple[str, type[SyncRow]], ...] = (
        ("customer", StripeCustomer), ("meter-hour", MeterUsageReport), ("paystack-link", PaystackPayment))
    for kind, model in kinds:
        for row in model._default_manager.exclude(state=SyncState.SYNCED).order_by("state", "pk")[:limit]:
            found.append(SyncRowView(kind=kind, pk=row.pk, what=str(row), state=row.state, attempts=row.attempts,
                                     last_error=row.last_error))
    return sorted(found, key=lambda r: (r.state != SyncState.FAILED, r.kind, r.pk))[:limit]
