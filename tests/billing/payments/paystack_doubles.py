"""A recording Paystack: the transport given to the Paystack gateway. It records every request (method,
path, headers, JSON body) and answers with Paystack's documented objects (paystack_fixtures.json), keeping
what a Paystack integration enforces: the secret key as a Bearer token, a transaction reference used once,
one customer per email,
an integer amount in the currency's subunit, Paystack's currencies only."""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from billing.payments.gateway import GatewayError

FIXTURES = json.loads((Path(__file__).parent / "paystack_fixtures.json").read_text())
CURRENCIES = {"NGN", "GHS", "ZAR", "KES", "USD", "XOF", "EGP"}


@dataclass
class PaystackRequest:
    method: str
    url: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class RecordingPaystack:
    def __init__(self, secret_key: str) -> None:
        self.secret_key = secret_key
        self.requests: list[PaystackRequest] = []
        self.transactions: dict[str, dict[str, Any]] = {}  # reference -> what was initialized
        self.customers: dict[str, dict[str, Any]] = {}  # email -> the customer object (Paystack's key is the email)
        self.down = False
        self.lose_answers = 0  # the next n initializations happen, but their answer is lost (a timeout)
        self._lock = threading.Lock()

    def __call__(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                 timeout: float) -> tuple[int, bytes]:
        parsed = json.loads(body.decode()) if body else {}
        with self._lock:
            self.requests.append(PaystackRequest(method, url, urlsplit(url).path, dict(headers), parsed))
        if self.down:
            raise GatewayError("Paystack unreachable: recording transport is down", retryable=True)
        if headers.get("Authorization") != f"Bearer {self.secret_key}":
            return 401, json.dumps({"status": False, "message": "Invalid key"}).encode()
        if method == "POST" and urlsplit(url).path.endswith("/transaction/initialize"):
            return self._initialize(parsed)
        if method == "POST" and urlsplit(url).path.endswith("/customer"):
            return self._customer(parsed)
        return 404, json.dumps({"status": False, "message": "Not found"}).encode()

    def _initialize(self, body: dict[str, Any]) -> tuple[int, bytes]:
        if str(body.get("currency", "NGN")) not in CURRENCIES:
            return 400, json.dumps(FIXTURES["currency_not_supported"]).encode()
        if not str(body.get("amount", "")).isdigit():
            return 400, json.dumps({"status": False, "message": "Invalid Amount Sent"}).encode()
        reference = str(body["reference"])
        if reference in self.transactions:
            return 400, json.dumps(FIXTURES["duplicate_reference"]).encode()
        answer = copy.deepcopy(FIXTURES["transaction_initialize"])
        code = f"ac{len(self.transactions) + 1:04d}"
        answer["data"].update(reference=reference, access_code=code,
                              authorization_url=f"https://checkout.paystack.com/{code}")
        self.transactions[reference] = {**body, "access_code": code}
        if self.lose_answers:
            self.lose_answers -= 1
            raise GatewayError("Paystack unreachable: timed out (the transaction was made)", retryable=True)
        return 200, json.dumps(answer).encode()

    def _customer(self, body: dict[str, Any]) -> tuple[int, bytes]:
        """Paystack answers an email it knows with that customer, not a second one."""
        email = str(body.get("email") or "").lower()
        if "@" not in email:
            return 400, json.dumps({"status": False, "message": "Invalid Email Address Passed"}).encode()
        with self._lock:
            if email not in self.customers:
                made = copy.deepcopy(FIXTURES["customer_create"]["data"])
                made.update(email=email, id=len(self.customers) + 1, customer_code=f"CUS_{len(self.customers) + 1:06d}",
                            first_name=body.get("first_name"), last_name=body.get("last_name"),
                            metadata=body.get("metadata"))
                self.customers[email] = made
            answer = {**FIXTURES["customer_create"], "data": self.customers[email]}
        return 200, json.dumps(answer).encode()

    def calls(self, path: str) -> list[PaystackRequest]:
        return [r for r in self.requests if r.path == path]
