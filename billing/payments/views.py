"""``POST /webhooks/stripe``: verify, store once, answer. Processing happens in a task. A bad signature is a
``DomainError``, answered as JSON by ``portal.errors.DomainErrorMiddleware`` (the webhook posts JSON)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.common.errors import DomainError
from billing.payments.errors import PaymentsCode
from billing.payments.gateway import SignatureError, webhook_event_verify
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
