"""``POST /webhooks/stripe`` and ``POST /webhooks/paystack``: verify, store once, answer. Processing
happens in a task. A bad signature is a ``DomainError``, answered as JSON by
``portal.errors.DomainErrorMiddleware`` (the webhooks post JSON)."""

from __future__ import annotations

import json

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.common.errors import DomainError
from billing.payments.errors import PaymentsCode
from billing.payments.gateway import SignatureError, webhook_event_verify
from billing.payments.paystack import webhook_signature_valid
from billing.payments.paystack_services import paystack_event_receive
from billing.payments.webhooks import stripe_event_receive


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    try:
        event = webhook_event_verify(payload=request.body, signature_header=request.headers.get("Stripe-Signature", ""),
                                     secret=settings.STRIPE_WEBHOOK_SECRET,
                                     tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS)
    except SignatureError as exc:
        raise DomainError(PaymentsCode.INVALID_SIGNATURE, str(exc)) from None
    row, created = stripe_event_receive(event=event)
    return JsonResponse({"received": True, "duplicate": not created, "status": row.status})


@csrf_exempt
@require_POST
def paystack_webhook(request: HttpRequest) -> JsonResponse:
    """Paystack's signature is the hex HMAC-SHA512 of the raw body with the secret key."""
    payload = request.body
    if not webhook_signature_valid(payload=payload, signature=request.headers.get("X-Paystack-Signature", ""),
                                   secret=settings.PAYSTACK_SECRET_KEY):
        raise DomainError(PaymentsCode.INVALID_SIGNATURE, "x-paystack-signature does not verify")
    try:
        event = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        raise DomainError(PaymentsCode.INVALID_SIGNATURE, "not a Paystack event")
    row, created = paystack_event_receive(event=event, payload=payload)
    return JsonResponse({"received": True, "duplicate": not created, "status": row.status})
