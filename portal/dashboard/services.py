"""Writes from the dashboard's settings page; each calls the customers app's own service."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from billing.customers.models import Customer, CustomerUser
from billing.customers.services import customer_update, customer_user_create


def dashboard_user_add(*, customer: Customer, username: str, email: str, password: str) -> CustomerUser:
    """A new login for the same customer (there are no roles yet: every dashboard user may add one)."""
    if get_user_model().objects.filter(username__iexact=username).exists():
        raise ValidationError({"username": ["That username is taken."]})
    return customer_user_create(customer=customer, username=username, password=password, email=email)


@transaction.atomic
def invoice_contact_set(*, customer: Customer, email: str) -> Customer:
    """Where invoices go: the customer's own ``email`` field (the same one the customers API exposes)."""
    return customer_update(customer=customer, data={"email": email})
