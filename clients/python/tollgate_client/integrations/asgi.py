"""ASGI middleware (FastAPI, Starlette, any ASGI app): ``app = TollgateMiddleware(app, tollgate, customer=...)``.
Per HTTP request: ``customer(scope)`` names who pays (None: not metered); before the handler, ``mode="reserve"``
holds ``quantity`` on ``meter`` (``"check"`` reads the balance, ``"track"`` does neither); a LimitExceeded,
there or from the handler, answers ``402`` with Tollgate's JSON error body. After the response, the usage
(``scope["state"]["tollgate"]``, a MeteredRequest the handler may adjust) is settled or tracked; a 5xx or an
exception bills nothing (``bill_errors=True`` bills them too). With ``fail_open`` (default) a Tollgate that
cannot be reached does not fail the request: the handler runs unchecked and its usage is queued as an event."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .._core import Quantity
from ..aio import AsyncTollgate
from ..client import Tollgate
from ..errors import LimitExceeded, TollgateUnavailable
from ._llm import maybe_await
from ._web import MeteredRequest, Mode, limit_body, refusal_from_balance

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
log = logging.getLogger("tollgate_client")


class TollgateMiddleware:
    """Use an AsyncTollgate (a sync Tollgate works but blocks the loop for reservations and checks)."""

    def __init__(self, app: ASGIApp, tollgate: AsyncTollgate | Tollgate, *, customer: Callable[[Scope], Any],
                 meter: str = "api_calls", quantity: Quantity | Callable[[Scope], Quantity] = 1, mode: Mode = "reserve",
                 ttl_seconds: int = 300, bill_errors: bool = False, fail_open: bool = True) -> None:
        if mode not in ("reserve", "check", "track"):
            raise ValueError("mode must be 'reserve', 'check' or 'track'")
        self.app, self.tollgate, self.identify = app, tollgate, customer
        self.meter, self.quantity, self.mode = meter, quantity, mode
        self.ttl_seconds, self.bill_errors, self.fail_open = ttl_seconds, bill_errors, fail_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        who = await maybe_await(self.identify(scope))
        if not who:
            await self.app(scope, receive, send)
            return
        quantity = self.quantity(scope) if callable(self.quantity) else self.quantity
        metered = MeteredRequest(customer=str(who), meter=self.meter, quantity=quantity)
        try:
            await self._before(metered)
        except LimitExceeded as exc:
            await refuse(send, exc)
            return
        scope.setdefault("state", {})["tollgate"] = metered
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except LimitExceeded as exc:
            await self._after(metered, failed=True)
            if status:
                raise
            await refuse(send, exc)
            return
        except BaseException:
            await self._after(metered, failed=True)
            raise
        await self._after(metered, failed=not status or status[0] >= 500)

    async def _before(self, metered: MeteredRequest) -> None:
        try:
            await self._hold_or_check(metered)
        except TollgateUnavailable:
            if not self.fail_open:
                raise
            log.warning("tollgate: unreachable before %s's request: let through, usage queued", metered.customer)

    async def _hold_or_check(self, metered: MeteredRequest) -> None:
        tg = self.tollgate
        if self.mode == "reserve":
            metered.reservation = await maybe_await(tg.reserve(
                customer=metered.customer, meter=self.meter, quantity=metered.quantity, ttl_seconds=self.ttl_seconds))
        elif self.mode == "check":
            refusal = refusal_from_balance(await maybe_await(tg.balance(metered.customer)), self.meter, metered.quantity)
            if refusal is not None:
                raise refusal

    async def _after(self, metered: MeteredRequest, *, failed: bool) -> None:
        bill = not metered.skip and (self.bill_errors or not failed)
        try:
            if metered.reservation is not None:
                if bill:
                    await maybe_await(metered.reservation.settle(events=[metered.event()]))
                else:
                    await maybe_await(metered.reservation.release())
                return
        except TollgateUnavailable:
            if not self.fail_open:
                raise
            if not bill:
                return  # the hold expires by itself
        if bill:  # the same event_id as the settle: if that got through, this is a duplicate
            await maybe_await(self.tollgate.track(customer=metered.customer, **metered.event()))


async def refuse(send: Send, exc: LimitExceeded) -> None:
    body = limit_body(exc)
    await send({"type": "http.response.start", "status": 402,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
