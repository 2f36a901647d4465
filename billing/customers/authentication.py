"""The DRF authenticators: an API key (Bearer) or a logged-in operator or customer user (session) becomes
a ``Principal`` (billing.common.auth). DRF imports them while ``rest_framework.views`` loads, so they
reach the services and selectors at the call, not at import."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from billing.common.auth import Principal


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, Principal] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <api key>'.")
        from billing.customers.services import api_key_authenticate

        principal = api_key_authenticate(raw_key=parts[1])
        if principal is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked API key.")
        return (None, principal)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="tollgate"'


class SessionPrincipalAuthentication(authentication.SessionAuthentication):
    """Operator staff (admin scope) and customer users (read scope on their own customer)."""

    def authenticate(self, request: Request) -> tuple[Any, Principal] | None:
        result = super().authenticate(request)
        if result is None:
            return None
        user = result[0]
        if user.is_staff:
            return (user, Principal(scopes=frozenset({"admin"}), user_id=user.pk))
        from billing.customers.selectors import customer_user_customer_pk

        customer_pk = customer_user_customer_pk(user_id=user.pk)
        if customer_pk is None:
            return None
        return (user, Principal(scopes=frozenset({"read"}), customer_id=customer_pk, user_id=user.pk))
