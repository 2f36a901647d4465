"""Signals other apps subscribe to (payments keeps Stripe's copy of a customer).

Sent inside the writing transaction, so what a receiver records commits or rolls back with the customer."""

from django.dispatch import Signal

# sender=Customer, customer=Customer; the customer was created, or its name or email changed
customer_details_changed = Signal()
