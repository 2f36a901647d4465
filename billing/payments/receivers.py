"""Subscriptions to other apps' signals (connected in apps.py)."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from billing.customers.models import Customer
from billing.customers.signals import customer_details_changed
from billing.invoicing.models import Invoice
from billing.invoicing.signals import invoice_finalized, invoice_status_changed
from billing.payments.paystack_services import paystack_payment_schedule
from billing.payments.services import stripe_customer_sync_schedule, stripe_invoice_status_changed, stripe_invoice_sync_schedule


@receiver(customer_details_changed, dispatch_uid="payments.customer_details_changed")
def on_customer_details_changed(sender: Any, customer: Customer, **kwargs: Any) -> None:
    """Sent inside the customer's transaction: the sync row commits with it, the push runs after."""
    stripe_customer_sync_schedule(customer=customer)


@receiver(invoice_finalized, dispatch_uid="payments.invoice_finalized")
def on_invoice_finalized(sender: Any, invoice_id: int, **kwargs: Any) -> None:
    """Sent after the finalizing transaction committed: record the collection by the plan's provider (each
    schedule does nothing for a plan of another mode) and queue it."""
    invoice = Invoice.objects.select_related("plan").filter(pk=invoice_id).first()
    if invoice is not None:
        stripe_invoice_sync_schedule(invoice=invoice)
        paystack_payment_schedule(invoice=invoice)


@receiver(invoice_status_changed, dispatch_uid="payments.invoice_status_changed")
def on_invoice_status_changed(sender: Any, invoice_id: int, status: str, **kwargs: Any) -> None:
    """Paid, uncollectible or void in Tollgate (sent after commit): Stripe must follow."""
    invoice = Invoice.objects.select_related("plan").filter(pk=invoice_id).first()
    if invoice is not None:
        stripe_invoice_status_changed(invoice=invoice)
