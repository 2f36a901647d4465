"""The ``Tollgate-Signature`` header: ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.

Receivers recompute the HMAC over the exact bytes they received and compare in constant time
(docs/api.md has a snippet); the timestamp lets them refuse replays older than a few minutes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

HEADER = "Tollgate-Signature"


def secret_new() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def signature(*, secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def header_value(*, secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret=secret, timestamp=timestamp, body=body)}"


def verify(*, secret: str, header: str, body: bytes, now: int, tolerance: int = 300) -> bool:
    """What a receiver does: parse the header, check the age, compare the HMAC in constant time."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(parts.get("v1", ""), signature(secret=secret, timestamp=timestamp, body=body))
