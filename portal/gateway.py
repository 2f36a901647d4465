"""The OpenAI-compatible LLM gateway (contract: "LLM gateway"; docs/gateway.md): ``POST
/gateway/v1/chat/completions`` and ``POST /gateway/v1/embeddings`` with a ``gateway`` key of one customer.

Each call reserves its worst case first (billing.gateway.metering): over a limit, a budget, a pause or a
stopped run, the answer is ``402`` in OpenAI's error shape and the upstream is never contacted. Then the
request goes upstream unchanged (a stream asks for its usage chunk), the answer comes back unchanged
(upstream errors too: nothing billed for them), and the reservation settles to the answer's ``usage``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.common.auth import Principal
from billing.common.errors import DomainError
from billing.customers.models import ApiKey
from billing.customers.services import api_key_authenticate
from billing.gateway import metering, upstream
from portal.errors import STATUS

log = logging.getLogger(__name__)

RUN_HEADER = "HTTP_X_TOLLGATE_RUN"


def openai_error(status: int, message: str, type_: str, code: str | None) -> JsonResponse:
    return JsonResponse({"error": {"message": message, "type": type_, "param": None, "code": code}}, status=status)


def _domain_error(error: DomainError) -> JsonResponse:
    status = STATUS.get(error.code, 400)
    type_ = ("insufficient_quota" if status == 402 else "api_error" if status >= 500
             else "invalid_request_error")
    return openai_error(status, error.message, type_, str(error.code))


def _principal(request: HttpRequest) -> Principal | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header.startswith("Bearer "):
        return None
    principal = api_key_authenticate(raw_key=header.removeprefix("Bearer ").strip())
    if principal is None or ApiKey.Scope.GATEWAY not in principal.scopes:
        return None
    return principal


def _proxy(request: HttpRequest, path: str, kind: str) -> HttpResponseBase:
    principal = _principal(request)
    if principal is None:
        return openai_error(401, "Send 'Authorization: Bearer <Tollgate gateway key>'.", "invalid_request_error",
                            "invalid_api_key")
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return openai_error(400, "The body is not JSON.", "invalid_request_error", "invalid_json")
    if not isinstance(body, dict):
        return openai_error(400, "The body must be a JSON object.", "invalid_request_error", "invalid_shape")
    try:
        call = metering.call_reserve(principal=principal, body=body, kind=kind,
                                     run_id=request.META.get(RUN_HEADER, "")[:128])
    except DomainError as error:
        return _domain_error(error)
    stream = bool(body.get("stream")) and kind == "chat"
    if stream:
        body = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
    try:
        response = upstream.send(path, body, stream=stream)
    except httpx.TimeoutException:
        metering.call_release(call)
        return openai_error(504, "The upstream did not answer in time.", "api_error", "upstream_timeout")
    except httpx.HTTPError as exc:
        metering.call_release(call)
        return openai_error(502, f"The upstream could not be reached: {type(exc).__name__}.", "api_error",
                            "upstream_unavailable")
    if response.status_code >= 400 or not stream:
        return _answer(call, response)
    return StreamingHttpResponse(_relay(call, response), status=response.status_code,
                                 content_type=response.headers.get("content-type", "text/event-stream"))


def _answer(call: metering.Call, response: httpx.Response) -> HttpResponse:
    """A whole answer: passed through as it came; its usage settles the call (an error: released)."""
    content = response.read()
    response.close()
    usage, model = None, None
    if response.status_code < 400:
        try:
            payload = json.loads(content)
        except ValueError:
            payload = None
        usage = metering.usage_of(payload)
        model = payload.get("model") if isinstance(payload, dict) else None
    if usage is None:
        metering.call_release(call)  # an upstream error, or an answer without usage: nothing to bill
    else:
        metering.call_settle(call, input_tokens=usage[0], output_tokens=usage[1],
                             model=model if isinstance(model, str) else None)
    return HttpResponse(content, status=response.status_code,
                        content_type=response.headers.get("content-type", "application/json"))


def _relay(call: metering.Call, response: httpx.Response) -> Iterator[bytes]:
    """The stream, relayed line by line; settled before its ``[DONE]`` is passed on (the client's last line
    comes after the billing), or when the stream ends or the client leaves: the usage chunk when it came,
    else the prompt's estimate and what was streamed."""
    usage: tuple[int, int] | None = None
    streamed_chars = 0
    settled = False

    def settle() -> None:
        nonlocal settled
        if settled:
            return
        settled = True
        try:
            found = usage or (call.prompt_estimate, metering.tokens_of_text(streamed_chars))
            metering.call_settle(call, input_tokens=found[0], output_tokens=found[1])
        except Exception:  # the client has its answer; the reservation expires by itself at worst
            log.exception("gateway: settling reservation %s failed", call.reservation.reservation_id)

    try:
        for line in response.iter_lines():
            data = line[5:].strip() if line.startswith("data:") else ""
            if data == "[DONE]":
                settle()
            elif data:
                chunk = _json(data)
                usage = metering.usage_of(chunk) or usage
                streamed_chars += _content_chars(chunk)
            yield (line + "\n").encode()
    finally:
        response.close()
        settle()


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _content_chars(chunk: Any) -> int:
    if not isinstance(chunk, dict):
        return 0
    total = 0
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        content = delta.get("content") if isinstance(delta, dict) else None
        total += len(content) if isinstance(content, str) else 0
    return total


@csrf_exempt
@require_POST
def chat_completions(request: HttpRequest) -> HttpResponseBase:
    return _proxy(request, "/chat/completions", "chat")


@csrf_exempt
@require_POST
def embeddings(request: HttpRequest) -> HttpResponseBase:
    return _proxy(request, "/embeddings", "embeddings")
