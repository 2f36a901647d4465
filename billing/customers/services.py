"""Writes for customers, projects, customer users and API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing.audit.services import audit_changed, audit_created, audit_record, snapshot
from billing.common.auth import Principal
from billing.common.errors import CommonCode, DomainError, validation_error
from billing.common.fields import aware_utc
from billing.customers.models import ApiKey, Customer, CustomerUser, Project
from billing.customers.signals import customer_details_changed

KEY_PREFIX = "tg"
LAST_USED_RESOLUTION = timedelta(seconds=60)


def _digest(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@transaction.atomic
def api_key_create(*, name: str, scope: str, customer: Customer | None = None, actor: str = "") -> tuple[ApiKey, str]:
    """Create a key and return it with its secret text, which is never stored and never shown again.

    Format ``tg_<prefix>_<secret>``: the prefix (12 hex chars) finds the row, the SHA-256 digest of the
    whole key proves it. Keys carry 256 bits of entropy, so a fast hash is enough (no password
    stretching needed); comparison is constant-time.
    """
    if scope not in ApiKey.Scope.values:
        raise validation_error({"scope": [f"Must be one of {', '.join(ApiKey.Scope.values)}."]})
    if scope == ApiKey.Scope.GATEWAY and customer is None:
        raise validation_error({"customer": ["A gateway key belongs to one customer: name it."]})
    prefix = secrets.token_hex(6)
    raw = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(name=name, prefix=prefix, key_hash=_digest(raw), scope=scope, customer=customer)
    audit_created(key, actor=actor)  # the digest is never copied into the log
    return key, raw


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: str = "") -> ApiKey:
    if key.revoked_at is None:
        before = snapshot(key)
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_changed(key, before, action="api_key.revoked", actor=actor)
    return key


def gateway_key_revoke(*, customer: Customer, prefix: str) -> ApiKey | None:
    """Revoke one of the customer's gateway keys by its prefix; None when it has no such key."""
    key = ApiKey.objects.filter(customer=customer, prefix=prefix, scope=ApiKey.Scope.GATEWAY).first()
    return api_key_revoke(key=key) if key is not None else None


def api_key_authenticate(*, raw_key: str) -> Principal | None:
    parts = raw_key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    # Checked against the database on every request (a revoked key is refused at once); plain SQL
    # because the ORM's query compilation cost as much as the query on the ingest hot path.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, key_hash, scope, customer_id, last_used_at FROM customers_apikey "
            "WHERE prefix = %s AND revoked_at IS NULL",
            [parts[1]],
        )
        found = cursor.fetchone()
    if found is None or not hmac.compare_digest(found[1], _digest(raw_key)):
        return None
    row = {"pk": found[0], "scope": found[2], "customer_id": found[3],
           "last_used_at": aware_utc(found[4])}
    now = timezone.now()
    # last_used_at at one-minute resolution: one write a minute per key, not one per request.
    if row["last_used_at"] is None or now - row["last_used_at"] > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=row["pk"]).update(last_used_at=now)
    return Principal(scopes=frozenset({row["scope"]}), customer_id=row["customer_id"], api_key_id=row["pk"])


# What its invoices print and how they are taxed (billing/invoicing/tax.py)
BILLING_DETAILS = ("billing_address", "tax_id", "invoice_email", "tax_rate", "tax_reverse_charge")


def customer_create(*, external_id: str, name: str, email: str = "", metadata: dict[str, Any] | None = None,
                    actor: str = "", billing: dict[str, Any] | None = None) -> Customer:
    """``billing``: any of ``BILLING_DETAILS`` (what its invoices print and how they are taxed)."""
    customer = Customer(external_id=external_id, name=name or external_id, email=email, metadata=metadata or {},
                        **{k: v for k, v in (billing or {}).items() if k in BILLING_DETAILS})
    try:
        customer.full_clean(validate_unique=False)
    except DjangoValidationError as exc:  # the API calls the external id "id"
        raise DjangoValidationError({("id" if k == "external_id" else k): v for k, v in exc.message_dict.items()}) from None
    try:
        with transaction.atomic():
            customer.save()
            audit_created(customer, actor=actor)
            # onboarding: payments records the Stripe customer to create once this commits
            customer_details_changed.send(sender=Customer, customer=customer)
    except IntegrityError:
        raise DomainError(CommonCode.ALREADY_EXISTS, f"A customer '{external_id}' already exists.") from None
    return customer


def customer_update(*, customer: Customer, data: dict[str, Any], actor: str = "") -> Customer:
    if "id" in data and data["id"] != customer.external_id:
        raise validation_error({"id": ["A customer's id is immutable."]})
    before = snapshot(customer)
    fields = [field for field in ("name", "email", "metadata", *BILLING_DETAILS) if field in data]
    for field in fields:
        setattr(customer, field, data[field])
    customer.full_clean()
    with transaction.atomic():
        customer.save(update_fields=[*fields, "updated_at"])
        audit_changed(customer, before, actor=actor)
        if {"name", "email"} & set(fields):  # what Stripe holds of a customer
            customer_details_changed.send(sender=Customer, customer=customer)
    return customer


def project_create(*, customer: Customer, key: str, name: str = "", actor: str = "") -> Project:
    project = Project(customer=customer, key=key, name=name or key)
    project.full_clean(validate_constraints=False)
    try:
        with transaction.atomic():
            project.save()
            audit_created(project, actor=actor)
    except IntegrityError:
        raise DomainError(CommonCode.ALREADY_EXISTS,
                          f"Customer '{customer.external_id}' already has a project '{key}'.") from None
    return project


def customer_user_create(*, customer: Customer, username: str, password: str, email: str = "",
                         actor: str = "") -> CustomerUser:
    user_model = get_user_model()
    if user_model.objects.filter(username=username).exists():  # the database's unique index settles a race
        raise validation_error({"username": ["This username is taken."]})
    _password_check(password, user_model(username=username, email=email))
    try:
        with transaction.atomic():
            user = user_model.objects.create_user(username=username, password=password, email=email)
            binding = CustomerUser.objects.create(user=user, customer=customer)
            audit_record(action="customer_user.created", obj=binding, actor=actor,
                         after={**(snapshot(binding) or {}), "username": username, "email": email})
            return binding
    except IntegrityError:
        raise validation_error({"username": ["This username is taken."]}) from None


def _password_check(password: str, user: Any) -> None:
    try:
        password_validation.validate_password(password, user)
    except DjangoValidationError as exc:
        raise validation_error({"password": list(exc.messages)}) from None


def _user_state(binding: CustomerUser) -> dict[str, Any]:
    """What the log keeps of a dashboard user (never the password's hash)."""
    user = binding.user
    return {**(snapshot(binding) or {}), "username": user.get_username(), "is_active": user.is_active}


@transaction.atomic
def customer_user_password_set(*, binding: CustomerUser, password: str, actor: str = "") -> CustomerUser:
    """A new password chosen by the operator (a reset); the settings' password validators apply."""
    _password_check(password, binding.user)
    binding.user.set_password(password)
    binding.user.save(update_fields=["password"])
    state = _user_state(binding)
    audit_record(action="customer_user.password_reset", obj=binding, before=state, after=state, actor=actor)
    return binding


@transaction.atomic
def customer_user_active_set(*, binding: CustomerUser, active: bool, actor: str = "") -> CustomerUser:
    """Deactivate (the login stops working at once, sessions included) or reactivate a dashboard user."""
    if binding.user.is_active == active:
        return binding
    before = _user_state(binding)
    binding.user.is_active = active
    binding.user.save(update_fields=["is_active"])
    audit_record(action="customer_user.activated" if active else "customer_user.deactivated", obj=binding,
                 before=before, after=_user_state(binding), actor=actor)
    return binding
