"""Handing one email to the mail server at most once (alert emails, invoice emails): the caller has claimed
the message's row (a committed state change), then learns from :func:`deliver_once` whether the message
was sent, surely not sent (safe to retry), or maybe sent (never retried: a second email is worse than none).
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass
from typing import Any

from django.core.mail import EmailMessage, get_connection

log = logging.getLogger(__name__)

# The server answered "no" before taking the message: nothing was delivered, so retrying is safe.
REFUSED_BEFORE_DELIVERY = (smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError,
                           smtplib.SMTPHeloError, smtplib.SMTPAuthenticationError, smtplib.SMTPNotSupportedError)
SENT, RETRY, UNKNOWN = "sent", "retry", "unknown"


@dataclass(frozen=True)
class Delivery:
    outcome: str  # SENT, RETRY (nothing was sent) or UNKNOWN (the server may have taken it)
    error: str = ""  # for the row's ``error``, at most 2,000 characters


def deliver_once(message: EmailMessage) -> Delivery:
    """Send ``message`` through the configured backend and say what is known of its fate."""
    try:
        connection = get_connection(fail_silently=False)
        connection.open()
    except Exception as exc:  # no connection: nothing was sent
        return Delivery(RETRY, f"not sent: {exc!r}"[:2000])
    try:
        connection.send_messages([message])
    except REFUSED_BEFORE_DELIVERY as exc:
        _close(connection)
        return Delivery(RETRY, f"refused: {exc!r}"[:2000])
    except Exception as exc:  # the server may have taken it
        _close(connection)
        return Delivery(UNKNOWN, f"unknown: {exc!r}"[:2000])
    _close(connection)
    return Delivery(SENT)


def _close(connection: Any) -> None:
    try:
        connection.close()
    except Exception:  # the message is handed over (or refused) already; QUIT failing changes nothing
        log.debug("closing the mail connection failed", exc_info=True)
