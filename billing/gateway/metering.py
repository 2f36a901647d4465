"""Reserve the worst case of an LLM call, then settle what the upstream says it used.

The worst case of a chat completion is its prompt (estimated at one token per ``CHARS_PER_TOKEN``
characters of the request's messages, rounded up) plus ``max_completion_tokens``/``max_tokens`` (or
``GATEWAY_DEFAULT_MAX_TOKENS``); of an embedding, its input. It is reserved on the ``GATEWAY_METER``
meter at the output price (dimensions ``model`` and ``direction: output``: the dearer of the two on
every rate card we know), so a customer over a limit, a budget of the key, a paused customer or a
stopped run is refused before anything is sent upstream.

After the answer, its ``usage`` becomes two events (input and output tokens, each with ``dimensions.model``
and ``dimensions.direction``, and ``trace.run_id`` when given) that settle the reservation: the
ledger then holds exactly what the upstream reported. A failed call is released (nothing billed). A
stream cut short settles what was generated: the usage chunk when it came, else the prompt estimate
and the streamed text at the same characters-per-token rate.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone

from billing.common import process_caches
from billing.common.auth import Principal
from billing.common.errors import CommonCode, DomainError, validation_error
from billing.customers.models import Customer
from billing.guardrails.models import Reservation
from billing.guardrails.reservations import Origin, reservation_create, reservation_release
from billing.usage.services import meters_cached, reservation_settle

CHARS_PER_TOKEN = 4
RESERVATION_TTL_SECONDS = 600
# A customer's external id never changes (customer_update refuses it): read once per process, it spares
# every call a query. The call needs the customer's pk (the reservation) and that id (its events) only.
EXTERNAL_IDS: dict[int, str] = process_caches.register("billing.gateway.metering.EXTERNAL_IDS", {})


@dataclass
class Call:
    """One metered call: who, which model, its reservation, and the run it belongs to."""

    principal: Principal
    customer: Customer
    model: str
    run_id: str
    reservation: Reservation
    prompt_estimate: int


def estimate_prompt(body: dict[str, Any], kind: str) -> int:
    """Tokens of the request's text, estimated from its length (rounded up; at least 1)."""
    if kind == "embeddings":
        text = body.get("input")
    else:
        text = [m.get("content") for m in body.get("messages") or [] if isinstance(m, dict)]
    return max(1, math.ceil(len(json.dumps(text, ensure_ascii=False)) / CHARS_PER_TOKEN))


def worst_case(body: dict[str, Any], kind: str) -> int:
    if kind == "embeddings":
        return estimate_prompt(body, kind)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is None:
        limit = settings.GATEWAY_DEFAULT_MAX_TOKENS
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise validation_error({"max_tokens": ["A positive integer."]})
    return estimate_prompt(body, kind) + limit


def call_reserve(*, principal: Principal, body: dict[str, Any], kind: str, run_id: str = "") -> Call:
    """Reserve the call's worst case for the key's customer (402 ``DomainError`` when it does not fit)."""
    if principal.customer_id is None:
        raise DomainError(CommonCode.FORBIDDEN, "A gateway key belongs to one customer.")
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 200:
        raise validation_error({"model": ["Required: the model to call."]})
    meter = meters_cached({settings.GATEWAY_METER}).get(settings.GATEWAY_METER)
    if meter is None:
        raise DomainError(CommonCode.NOT_FOUND, f"The gateway's meter '{settings.GATEWAY_METER}' does not exist.")
    customer = _customer(principal.customer_id)
    quantity = worst_case(body, kind)
    reservation, _ = reservation_create(
        customer=customer, reservation_id=f"gw-{uuid.uuid4().hex}", meter=meter, quantity=Decimal(quantity),
        dimensions={"model": model, "direction": "output"}, ttl_seconds=RESERVATION_TTL_SECONDS,
        origin=Origin(run_id=run_id, api_key_pk=principal.api_key_id), fresh=True)
    return Call(principal, customer, model, run_id, reservation, estimate_prompt(body, kind))


def _customer(pk: int) -> Customer:
    """The key's customer as far as a call needs it (pk and external id), its id read once per process."""
    external_id = EXTERNAL_IDS.get(pk)
    if external_id is None:
        external_id = EXTERNAL_IDS[pk] = Customer.objects.values_list("external_id", flat=True).get(pk=pk)
    return Customer(pk=pk, external_id=external_id)


def call_settle(call: Call, *, input_tokens: int, output_tokens: int, model: str | None = None) -> None:
    """Settle the reservation with the call's usage: one event per direction (an empty one is left out),
    timestamped now (the call's end)."""
    base = call.reservation.reservation_id
    at = timezone.now().isoformat()
    events = []
    for direction, tokens in (("input", input_tokens), ("output", output_tokens)):
        if tokens <= 0:
            continue
        event: dict[str, Any] = {"event_id": f"{base}-{direction}", "customer": call.customer.external_id,
                                 "meter": settings.GATEWAY_METER, "quantity": str(tokens), "timestamp": at,
                                 "dimensions": {"model": model or call.model, "direction": direction}}
        if call.run_id:
            event["trace"] = {"run_id": call.run_id}
        events.append(json.dumps(event).encode())
    if events:
        reservation_settle(reservation=call.reservation, principal=call.principal, raw_events=events)
    else:
        call_release(call)


def call_release(call: Call) -> None:
    """The call failed: nothing is billed."""
    if call.reservation.state == Reservation.State.PENDING:
        reservation_release(reservation=call.reservation)


def usage_of(payload: Any) -> tuple[int, int] | None:
    """(input, output) tokens of an OpenAI response or stream chunk's ``usage``; None without one."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        return None
    return prompt, completion


def tokens_of_text(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)
