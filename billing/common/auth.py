"""Who is calling, as the views see it: a ``Principal`` (the scopes it holds and, when restricted, the one
customer it may see), the scope check and the per-key rate limit. The authenticators that make a
Principal from an API key or a session live with the keys and users (billing.customers.authentication).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework import exceptions, permissions, throttling
from rest_framework.request import Request

from billing.common.degraded import soft

SCOPES = ("ingest", "read", "admin")


@dataclass(frozen=True)
class Principal:
    scopes: frozenset[str]
    customer_id: int | None = None  # Customer.pk when restricted to one customer
    api_key_id: int | None = None
    user_id: int | None = None

    def has_scope(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def may_access_customer_pk(self, customer_pk: int) -> bool:
        return self.customer_id is None or self.customer_id == customer_pk

    @property
    def rate_key(self) -> str:
        return f"key:{self.api_key_id}" if self.api_key_id else f"user:{self.user_id}"


def principal_of(request: Request) -> Principal:
    """The authenticated caller of a view guarded by HasScope."""
    principal = request.auth
    if not isinstance(principal, Principal):
        raise exceptions.NotAuthenticated("Send 'Authorization: Bearer <api key>'.")
    return principal


def actor_of(request: Request) -> str:
    """Who made a write, for the audit trail: ``api_key:<pk>``, or the signed-in user's name."""
    principal = principal_of(request)
    if principal.api_key_id:
        return f"api_key:{principal.api_key_id}"
    return getattr(request.user, "username", "") or "unknown"


class HasScope(permissions.BasePermission):
    """A view says ``required_scope = "read"`` or a mapping of HTTP method to scope."""

    message = "This key lacks the scope this call needs."

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.auth
        if not isinstance(principal, Principal):
            raise exceptions.NotAuthenticated("Send 'Authorization: Bearer <api key>'.")
        required = getattr(view, "required_scope", "admin")
        if isinstance(required, dict):
            required = required.get(request.method, "admin")
        allowed = (required,) if isinstance(required, str) else tuple(required)
        if any(principal.has_scope(scope) for scope in allowed):
            return True
        self.message = f"This key lacks the '{allowed[0]}' scope."
        return False


class KeyRateThrottle(throttling.BaseThrottle):
    """Fixed one-second window per key, counted in the cache (Redis when REDIS_URL is set, so all
    workers share it). ``TOLLGATE_RATE_LIMIT_PER_SECOND=0`` switches it off. When the cache does not
    answer, the limiter fails open: the request goes through, the failure is logged and counted
    (billing.common.degraded), so a Redis outage never fails the API."""

    def allow_request(self, request: Request, view: Any) -> bool:
        limit = int(getattr(settings, "TOLLGATE_RATE_LIMIT_PER_SECOND", 0))
        principal = request.auth
        if limit <= 0 or not isinstance(principal, Principal):
            return True
        self._wait = 1.0
        return soft("rate_limit_cache", _count_within, f"tollgate:rl:{principal.rate_key}", limit, default=True)


def _count_within(prefix: str, limit: int) -> bool:
    """Count one request in the current one-second window of ``prefix``; True while within ``limit``."""
    key = f"{prefix}:{int(time.time())}"
    if cache.add(key, 1, timeout=2):
        return True
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=2)
        return True
    return count <= limit

    def wait(self) -> float | None:
        return getattr(self, "_wait", 1.0)
