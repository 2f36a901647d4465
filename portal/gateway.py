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


def begin(request: HttpRequest, kind: str) -> tuple[metering.Call, dict[str, Any], bool] | JsonResponse:
    """Everything before the upstream: the key, the body, the reservation (both views, sync and async).
    The call, the body to send and whether it streams; or the answer that refuses it."""
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
    return call, body, stream


def unreachable(call: metering.Call, exc: httpx.HTTPError) -> JsonResponse:
    """The upstream timed out or could not be reached: released, 504 or 502."""
    metering.call_release(call)
    if isinstance(exc, httpx.TimeoutException):
        return openai_error(504, "The upstream did not answer in time.", "api_error", "upstream_timeout")
    return openai_error(502, f"The upstream could not be reached: {type(exc).__name__}.", "api_error",
                        "upstream_unavailable")


def _proxy(request: HttpRequest, path: str, kind: str) -> HttpResponseBase:
    begun = begin(request, kind)
    if isinstance(begun, JsonResponse):
        return begun
    call, body, stream = begun
    try:
        response = upstream.send(path, body, stream=stream)
    except httpx.HTTPError as exc:
        return unreachable(call, exc)
    if response.status_code >= 400 or not stream:
        content = response.read()
        response.close()
        return answer(call, response, content)
    return StreamingHttpResponse(_relay(call, response), status=response.status_code,
                                 content_type=response.headers.get("content-type", "text/event-stream"))


def answer(call: metering.Call, response: httpx.Response, content: bytes) -> HttpResponse:
    """A whole answer: passed through as it came; its usage settles the call (an error: released)."""
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


class StreamMeter:
    """Reads a relayed stream's lines: the usage chunk when it comes, else the text streamed so far; settles
    once: before the ``[DONE]`` line is passed on (the client's last line comes after the billing), or when
    the stream ends or the client leaves (the prompt's estimate and what was streamed, without a usage chunk)."""

    def __init__(self, call: metering.Call) -> None:
        self.call = call
        self.usage: tuple[int, int] | None = None
        self.streamed_chars = 0
        self.settled = False

    def feed(self, line: str) -> bool:
        """Take one line; True when it is the ``[DONE]`` line (settle before passing it on)."""
        data = line[5:].strip() if line.startswith("data:") else ""
        if data == "[DONE]":
            return True
        if data:
            chunk = _json(data)
            self.usage = metering.usage_of(chunk) or self.usage
            self.streamed_chars += _content_chars(chunk)
        return False

    def settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        try:
            found = self.usage or (self.call.prompt_estimate, metering.tokens_of_text(self.streamed_chars))
            metering.call_settle(self.call, input_tokens=found[0], output_tokens=found[1])
        except Exception:  # the client has its answer; the reservation expires by itself at worst
            log.exception("gateway: settling reservation %s failed", self.call.reservation.reservation_id)


def _relay(call: metering.Call, response: httpx.Response) -> Iterator[bytes]:
    """The stream, relayed line by line (StreamMeter bills it)."""
    meter = StreamMeter(call)
    try:
        for line in response.iter_lines():
            if meter.feed(line):
                meter.settle()
            yield (line + "\n").encode()
    finally:
        response.close()
        meter.settle()


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
