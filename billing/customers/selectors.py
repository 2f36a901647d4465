from __future__ import annotations

from django.db.models import QuerySet

from billing.common.auth import Principal
from billing.common.errors import CommonCode, DomainError
from billing.customers.models import Customer, CustomerUser, Project


def customer_user_customer_pk(*, user_id: int) -> int | None:
    return CustomerUser.objects.filter(user_id=user_id).values_list("customer_id", flat=True).first()


def customer_find(*, external_id: str | None = None, pk: int | None = None) -> Customer | None:
    """The customer by its external id or its pk, or None; no access check (the caller's own)."""
    if pk is not None:
        return Customer.objects.filter(pk=pk).first()
    return Customer.objects.filter(external_id=external_id).first()


def customers_by_external_id() -> QuerySet[Customer]:
    return Customer.objects.order_by("external_id")


def customer_list(*, principal: Principal) -> QuerySet[Customer]:
    qs = Customer.objects.all()
    if principal.customer_id is not None:
        qs = qs.filter(pk=principal.customer_id)
    return qs


def customer_get(*, external_id: str, principal: Principal) -> Customer:
    """The customer, or 404 for an unknown id *and* for another tenant's id: never reveal which."""
    customer = Customer.objects.filter(external_id=external_id).first()
    if customer is None or not principal.may_access_customer_pk(customer.pk):
        raise DomainError(CommonCode.NOT_FOUND, "No such customer.")
    return customer


def project_list(*, customer: Customer) -> QuerySet[Project]:
    return customer.projects.all()
