"""``EMAIL_URL``: one URL for Django's email settings (docs/operations.md, "Alert emails").

    smtp://user:password@host:587          plain SMTP (user and password URL-encoded)
    smtp+tls://user:password@host:587      STARTTLS (EMAIL_USE_TLS)
    smtp+ssl://user:password@host:465      implicit TLS (EMAIL_USE_SSL)
    console://                             print to stdout
    file:///var/mail/tollgate              one file per message in that folder
    locmem://                              in memory (tests)
    dummy://                               discard
Query parameters: ``timeout`` (seconds) and ``from`` (DEFAULT_FROM_EMAIL).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

BACKENDS = {
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "smtp+tls": "django.core.mail.backends.smtp.EmailBackend",
    "smtp+ssl": "django.core.mail.backends.smtp.EmailBackend",
    "console": "django.core.mail.backends.console.EmailBackend",
    "file": "django.core.mail.backends.filebased.EmailBackend",
    "locmem": "django.core.mail.backends.locmem.EmailBackend",
    "dummy": "django.core.mail.backends.dummy.EmailBackend",
}


def email_settings_from_url(url: str) -> dict[str, Any]:
    """The Django settings ``url`` stands for; ValueError for an unknown scheme or a bad port."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in BACKENDS:
        raise ValueError(f"EMAIL_URL: unknown scheme '{parts.scheme}' (use one of {', '.join(BACKENDS)})")
    out: dict[str, Any] = {"EMAIL_BACKEND": BACKENDS[scheme]}
    if scheme.startswith("smtp"):
        out["EMAIL_HOST"] = parts.hostname or "localhost"
        out["EMAIL_PORT"] = parts.port or {"smtp": 25, "smtp+tls": 587, "smtp+ssl": 465}[scheme]
        out["EMAIL_HOST_USER"] = unquote(parts.username or "")
        out["EMAIL_HOST_PASSWORD"] = unquote(parts.password or "")
        out["EMAIL_USE_TLS"] = scheme == "smtp+tls"
        out["EMAIL_USE_SSL"] = scheme == "smtp+ssl"
    elif scheme == "file":
        out["EMAIL_FILE_PATH"] = unquote(parts.path) or "."
    query = parse_qs(parts.query)
    if "timeout" in query:
        out["EMAIL_TIMEOUT"] = float(query["timeout"][-1])
    if "from" in query:
        out["DEFAULT_FROM_EMAIL"] = query["from"][-1]
    return out
