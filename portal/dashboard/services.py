"""Writes from the dashboard's settings page; each calls the customers app's own service."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from billing.customers.models import Customer, CustomerUser
from billing.customers.services import customer_update, customer_user_create


def dashboard_login_name(*, customer: Customer, name: str) -> str:
    """The login a dashboard user adds for ``name``: ``<name>@<customer id>``. Login names are global, so each
    customer adds them in its own namespace: whether a name is free then says nothing of other tenants."""
    return f"{name}@{customer.external_id}"


def dashboard_user_add(*, customer: Customer, username: str, email: str, password: str) -> CustomerUser:
    """A new login for the same customer (there are no roles yet: every dashboard user may add one), named
    ``<username>@<customer id>``."""
    login = dashboard_login_name(customer=customer, name=username)
    if len(login) > 150:
        raise ValidationError({"username": [f"At most {149 - len(customer.external_id)} characters here."]})
    if get_user_model().objects.filter(username__iexact=login).exists():
        raise ValidationError({"username": [f"{login} exists already."]})
    return customer_user_create(customer=customer, username=login, password=password, email=email)


@transaction.atomic
def invoice_contact_set(*, customer: Customer, email: str) -> Customer:
    """Where invoices go: the customer's own ``email`` field (the same one the customers API exposes)."""
    return customer_update(customer=customer, data={"email": email})
