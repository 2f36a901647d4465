"""Customers save a payment method: a Stripe Checkout page in setup mode, opened from the dashboard. When
it completes, the ``checkout.session.completed`` webhook makes the saved card the customer's default
(webhooks.py), and the invoices pushed from then on are charged to it instead of being sent."""

from __future__ import annotations

import uuid

from django.utils import timezone

from billing.customers.models import Customer
from billing.payments.gateway import gateway_get
from billing.payments.services import _stripe_customer_id


def payment_method_setup_start(*, customer: Customer, success_url: str, cancel_url: str) -> str:
    """The URL of a new Checkout page for this customer (onboarded in Stripe first if it was not yet).
    Raises GatewayError when Stripe is off or unreachable."""
    gateway = gateway_get()
    stripe_customer_id = _stripe_customer_id(customer_pk=customer.pk, gateway=gateway, now=timezone.now())
    return gateway.checkout_setup_session(stripe_customer_id=stripe_customer_id, customer_pk=customer.pk,
                                          request_id=uuid.uuid4().hex, success_url=success_url, cancel_url=cancel_url)
