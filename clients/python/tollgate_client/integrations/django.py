"""Django middleware: add ``"tollgate_client.integrations.django.TollgateMiddleware"`` to MIDDLEWARE and set
``TOLLGATE_MIDDLEWARE = {"customer": "myapp.billing.customer_of", "meter": "api_calls", "mode": "reserve"}``
(``customer``: a callable or its dotted path, ``request -> customer id or None``; ``quantity``: a number or a
callable of the request; ``mode``: reserve | check | track; ``bill_errors``; ``fail_open``, default True: an
unreachable Tollgate lets the request through and queues its usage). The client comes from
``TOLLGATE_URL`` / ``TOLLGATE_API_KEY`` (settings or environment). The handler may adjust ``request.tollgate``
(a MeteredRequest). A LimitExceeded, before the view or raised by it, answers 402 with Tollgate's JSON error."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from ..client import Tollgate
from ..errors import LimitExceeded, TollgateUnavailable
from ._web import MeteredRequest, limit_body, refusal_from_balance

log = logging.getLogger("tollgate_client")
_clients: dict[tuple[str, str], Tollgate] = {}


def shared_client() -> Tollgate:
    """One Tollgate per process (its queue and sender thread are shared by every request)."""
    url = getattr(settings, "TOLLGATE_URL", None) or os.environ.get("TOLLGATE_URL", "")
    key = getattr(settings, "TOLLGATE_API_KEY", None) or os.environ.get("TOLLGATE_API_KEY", "")
    if (url, key) not in _clients:
        _clients[(url, key)] = Tollgate(base_url=url or None, api_key=key or None)
    return _clients[(url, key)]


class TollgateMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse], *, tollgate: Tollgate | None = None,
                 **options: Any) -> None:
        self.get_response = get_response
        config = {**getattr(settings, "TOLLGATE_MIDDLEWARE", {}), **options}
        identify = config.get("customer")
        if identify is None:
            raise ValueError("TOLLGATE_MIDDLEWARE needs 'customer': a callable (or its dotted path) request -> id")
        self.identify: Callable[[HttpRequest], Any] = import_string(identify) if isinstance(identify, str) else identify
        self.meter: str = config.get("meter", "api_calls")
        self.quantity: Any = config.get("quantity", 1)
        self.mode: str = config.get("mode", "reserve")
        if self.mode not in ("reserve", "check", "track"):
            raise ValueError("mode must be 'reserve', 'check' or 'track'")
        self.ttl_seconds: int = config.get("ttl_seconds", 300)
        self.bill_errors: bool = config.get("bill_errors", False)
        self.fail_open: bool = config.get("fail_open", True)
        self._tollgate = tollgate

    @property
    def tollgate(self) -> Tollgate:
        if self._tollgate is None:
            self._tollgate = shared_client()
        return self._tollgate

    def __call__(self, request: HttpRequest) -> HttpResponse:
        who = self.identify(request)
        if not who:
            return self.get_response(request)
        quantity = self.quantity(request) if callable(self.quantity) else self.quantity
        metered = MeteredRequest(customer=str(who), meter=self.meter, quantity=quantity)
        try:
            if self.mode == "reserve":
                metered.reservation = self.tollgate.reserve(customer=metered.customer, meter=self.meter,
                                                            quantity=quantity, ttl_seconds=self.ttl_seconds)
            elif self.mode == "check":
                refusal = refusal_from_balance(self.tollgate.balance(metered.customer), self.meter, quantity)
                if refusal is not None:
                    raise refusal
        except LimitExceeded as exc:
            return refused(exc)
        except TollgateUnavailable:
            if not self.fail_open:
                raise
            log.warning("tollgate: unreachable before %s's request: let through, usage queued", metered.customer)
        request.tollgate = metered  # type: ignore[attr-defined]
        try:
            response = self.get_response(request)
        except BaseException:
            self.finish(metered, failed=True)
            raise
        self.finish(metered, failed=response.status_code >= 500)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """A view raising LimitExceeded (e.g. its own reserve) answers 402 instead of 500."""
        if isinstance(exception, LimitExceeded):
            metered = getattr(request, "tollgate", None)
            if isinstance(metered, MeteredRequest):
                metered.skip = True
            return refused(exception)
        return None

    def finish(self, metered: MeteredRequest, *, failed: bool) -> None:
        bill = not metered.skip and (self.bill_errors or not failed)
        try:
            if metered.reservation is not None:
                if bill:
                    metered.reservation.settle(events=[metered.event()])
                else:
                    metered.reservation.release()
                return
        except TollgateUnavailable:
            if not self.fail_open:
                raise
            if not bill:
                return  # the hold expires by itself
        if bill:  # the same event_id as the settle: if that got through, this is a duplicate
            self.tollgate.track(customer=metered.customer, **metered.event())


def refused(exc: LimitExceeded) -> HttpResponse:
    return HttpResponse(limit_body(exc), status=402, content_type="application/json")
