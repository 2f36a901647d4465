"""Paystack's gateway: a small JSON client over Paystack's REST API, and its webhook signature.

Paystack is the second provider (docs/payments.md "Paystack"): for plans billed in African currencies it
collects Tollgate's invoices through a payment link (a transaction initialized with the invoice's amount in
the currency's subunit, kobo for NGN). Like the Stripe gateway, callers get plain values and
:class:`GatewayError`; the HTTP transport is one function, so tests give it a recording one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from billing.payments.gateway import GatewayError

# (method, url, headers, body, timeout) -> (HTTP status, body). Tests set a recording one.
Transport = Callable[[str, str, dict[str, str], bytes | None, float], tuple[int, bytes]]
TRANSPORT: Transport | None = None
DUPLICATE_REFERENCE = "duplicate_reference"


@dataclass(frozen=True)
class PaymentLink:
    reference: str
    authorization_url: str
    access_code: str


def _urllib_transport(method: str, url: str, headers: dict[str, str], body: bytes | None,
                      timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310 - https base from settings
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise GatewayError(f"Paystack unreachable: {exc}", retryable=True) from exc


class PaystackGateway:
    def __init__(self, *, secret_key: str, base_url: str, transport: Transport, timeout: float) -> None:
        self._secret_key = secret_key
        self._base_url = base_url.rstrip("/")
        self._transport = transport
        self._timeout = timeout

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._secret_key}", "Accept": "application/json"}
        body = None
        if payload is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(payload).encode()
        status, raw = self._transport(method, self._base_url + path, headers, body, self._timeout)
        try:
            answer = json.loads(raw.decode() or "{}")
        except (UnicodeDecodeError, ValueError):
            answer = {}
        message = str(answer.get("message") or f"HTTP {status}") if isinstance(answer, dict) else f"HTTP {status}"
        if status >= 500 or status == 429:
            raise GatewayError(f"Paystack {status}: {message}", retryable=True)
        if status >= 400 or not isinstance(answer, dict) or answer.get("status") is not True:
            code = DUPLICATE_REFERENCE if "duplicate" in message.lower() and "reference" in message.lower() else ""
            raise GatewayError(f"Paystack refused ({status}): {message}", retryable=False, code=code)
        return answer

    def customer_create(self, *, email: str, name: str, metadata: dict[str, str]) -> str:
        """The ``customer_code`` of Paystack's customer with this email: Paystack answers an email it knows
        with that customer, so a retry (or a lost answer) never makes a second one."""
        first, _, last = name.strip().partition(" ")
        data = self._call("POST", "/customer", {"email": email, "first_name": first, "last_name": last,
                                                "metadata": metadata}).get("data") or {}
        code = str(data.get("customer_code") or "") if isinstance(data, dict) else ""
        if not code:
            raise GatewayError("Paystack answered a customer without a customer_code", retryable=True)
        return code

    def transaction_initialize(self, *, email: str, amount_minor: int, currency: str, reference: str,
                               metadata: dict[str, str], callback_url: str = "") -> PaymentLink:
        """A payment link for one amount: Paystack's checkout page, tied to our ``reference`` (unique per
        Paystack integration: a second initialize with it is refused, so a reference is never paid twice)."""
        payload: dict[str, Any] = {"email": email, "amount": str(amount_minor), "currency": currency.upper(),
                                   "reference": reference, "metadata": metadata}
        if callback_url:
            payload["callback_url"] = callback_url
        data = self._call("POST", "/transaction/initialize", payload).get("data") or {}
        return PaymentLink(reference=str(data.get("reference") or reference),
                           authorization_url=str(data.get("authorization_url") or ""),
                           access_code=str(data.get("access_code") or ""))


def paystack_enabled() -> bool:
    return bool(settings.PAYSTACK_SECRET_KEY)


def paystack_gateway_get() -> PaystackGateway:
    if not settings.PAYSTACK_SECRET_KEY:
        raise GatewayError("PAYSTACK_SECRET_KEY is not set: the Paystack integration is off.", retryable=True,
                           code="not_configured")
    return PaystackGateway(secret_key=settings.PAYSTACK_SECRET_KEY, base_url=settings.PAYSTACK_API_BASE,
                           transport=TRANSPORT or _urllib_transport, timeout=settings.PAYSTACK_TIMEOUT_SECONDS)


def webhook_signature_valid(*, payload: bytes, signature: str, secret: str) -> bool:
    """Paystack signs the raw body: ``x-paystack-signature`` is the hex HMAC-SHA512 of it, keyed with the
    secret key. Compared in constant time; no secret configured verifies nothing."""
    if not secret or not signature:
        return False
    expected = hmac.new(secret.encode(), payload, hashlib.sha512).hexdigest()
    return hmac.compare_digest(expected, signature.strip().lower())
