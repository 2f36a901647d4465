"""Abuse limits that come before any key or password is looked at, counted in the cache per client address
(a fixed window each; the cache down: fail open, billing.common.degraded), documented in docs/api.md
("Rate limits") and docs/operations.md:

- ``LoginThrottleMiddleware``: ``/accounts/login/`` and ``/admin/login/``. Failed logins are counted per
  address and username (``TOLLGATE_LOGIN_FAILURES_PER_ACCOUNT``, 5) and per address
  (``TOLLGATE_LOGIN_FAILURES_PER_IP``, 50) in ``TOLLGATE_LOGIN_WINDOW_SECONDS`` (15 minutes); beyond
  either, a login POST answers 429 with Retry-After without checking the password. A success clears the
  address and username's count. Per address and username, not per account alone: nobody can lock a user
  out from elsewhere.
- ``AnonymousApiThrottleMiddleware``: API requests that authenticate as no one (no credentials, or an
  answer 401) count per address, ``TOLLGATE_ANON_RATE_LIMIT_PER_MINUTE`` (120) a minute; beyond it every
  API request from that address answers 429 until the minute is over, so keys cannot be guessed at speed.
  A process checks the shared count only for addresses that sent no credentials or had a 401 from it in
  the last minute: well-behaved clients pay nothing.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse

from billing.common.degraded import soft
from billing.common.errors import CommonCode, DomainError
from portal.errors import answer

LOGIN_PATHS = ("/accounts/login/", "/admin/login/")
_SUSPECTS_MAX = 10_000


def client_address(request: HttpRequest) -> str:
    """The client's address: ``REMOTE_ADDR``, or the header a trusted proxy sets (``TOLLGATE_CLIENT_IP_HEADER``,
    a ``request.META`` key such as ``HTTP_X_REAL_IP``), its first address."""
    header = getattr(settings, "TOLLGATE_CLIENT_IP_HEADER", "")
    value = request.META.get(header, "") if header else ""
    return (value.split(",")[0].strip() or str(request.META.get("REMOTE_ADDR", "")))[:64]


def _window(seconds: int) -> tuple[int, int]:
    """The current fixed window's number and the seconds left in it."""
    now = time.time()
    return int(now // seconds), max(1, math.ceil(seconds - now % seconds))


def _key(kind: str, *parts: str) -> str:
    return f"tollgate:{kind}:" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _count(key: str, ttl: int) -> None:
    if not cache.add(key, 1, timeout=ttl):
        try:
            cache.incr(key)
        except ValueError:  # expired in between
            cache.add(key, 1, timeout=ttl)


def _over(keys_and_limits: list[tuple[str, int]]) -> bool:
    counts = cache.get_many([key for key, _ in keys_and_limits])
    return any(int(counts.get(key) or 0) >= limit for key, limit in keys_and_limits)


def too_many(request: HttpRequest, message: str, retry_after: int) -> HttpResponse:
    response = answer(request, DomainError(CommonCode.RATE_LIMITED, message))
    response["Retry-After"] = str(retry_after)
    return response


# --- logins -------------------------------------------------------------------------------------------------
def _login_keys(request: HttpRequest, username: str) -> list[tuple[str, int]]:
    window, _ = _window(int(settings.TOLLGATE_LOGIN_WINDOW_SECONDS))
    address = client_address(request)
    return [(_key("login", str(window), address, username.strip().lower()), int(settings.TOLLGATE_LOGIN_FAILURES_PER_ACCOUNT)),
            (_key("login-ip", str(window), address), int(settings.TOLLGATE_LOGIN_FAILURES_PER_IP))]


@receiver(user_login_failed)
def _login_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any) -> None:
    if request is None or request.path not in LOGIN_PATHS:
        return
    ttl = int(settings.TOLLGATE_LOGIN_WINDOW_SECONDS)
    for key, _ in _login_keys(request, str(credentials.get("username") or "")):
        soft("login_throttle_cache", _count, key, ttl, default=None)


@receiver(user_logged_in)
def _logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if request is not None and request.path in LOGIN_PATHS:
        soft("login_throttle_cache", cache.delete, _login_keys(request, user.get_username())[0][0], default=None)


class LoginThrottleMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "POST" and request.path in LOGIN_PATHS:
            keys = _login_keys(request, str(request.POST.get("username", "")))
            if soft("login_throttle_cache", _over, keys, default=False):
                _, left = _window(int(settings.TOLLGATE_LOGIN_WINDOW_SECONDS))
                return too_many(request, f"Too many failed logins from your address; try again in {math.ceil(left / 60)} "
                                "minutes.", left)
        return self.get_response(request)


# --- unauthenticated API traffic ----------------------------------------------------------------------------
_suspects: dict[str, float] = {}  # address -> until (monotonic): a 401 went there from this process lately


def _anonymous(request: HttpRequest) -> bool:
    return not request.META.get("HTTP_AUTHORIZATION") and settings.SESSION_COOKIE_NAME not in request.COOKIES


class AnonymousApiThrottleMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = int(settings.TOLLGATE_ANON_RATE_LIMIT_PER_MINUTE)
        if limit <= 0 or not request.path.startswith("/api/"):
            return self.get_response(request)
        address = client_address(request)
        window, left = _window(60)
        key = _key("anon", str(window), address)
        anonymous = _anonymous(request)
        if (anonymous or _suspects.get(address, 0.0) > time.monotonic()) and soft(
                "anon_throttle_cache", _over, [(key, limit)], default=False):
            return too_many(request, f"Too many unauthenticated requests; retry in {left} s.", left)
        response = self.get_response(request)
        if anonymous or response.status_code == 401:
            soft("anon_throttle_cache", _count, key, 61, default=None)
            if response.status_code == 401:
                if len(_suspects) >= _SUSPECTS_MAX:
                    _suspects.clear()
                _suspects[address] = time.monotonic() + 60
        return response
