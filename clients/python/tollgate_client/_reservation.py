"""Reservations (reserve, then settle): the server holds the worst case before the work, the actual usage is
posted after, and what was not used is released. Each reservation_id and settle event_id is fixed once, so
retried calls are idempotent on the server."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any

from ._core import RESERVATIONS_PATH, Quantity, build_event, finalize, new_id, quantity_text
from .errors import LIMIT_CODES, APIError

log = logging.getLogger("tollgate_client")

Call = Callable[[str, str, Any], Any]
AsyncCall = Callable[[str, str, Any], Awaitable[Any]]


def reservation_body(*, customer: str, meter: str, quantity: Quantity, ttl_seconds: int,
                     dimensions: Mapping[str, str] | None, reservation_id: str | None, project: str | None = None,
                     run_id: str | None = None) -> dict[str, Any]:
    """The reservation's body; ``project`` and ``run_id`` let pauses, run breakers and budgets judge it."""
    body: dict[str, Any] = {"reservation_id": reservation_id or new_id(), "customer": customer, "meter": meter,
                            "quantity": quantity_text(quantity), "ttl_seconds": ttl_seconds}
    if dimensions:
        body["dimensions"] = dict(dimensions)
    if project:
        body["project"] = project
    if run_id:
        body["trace"] = {"run_id": run_id}
    return body


def settle_body(customer: str, meter: str, quantity: Quantity | None, events: Sequence[Mapping[str, Any]] | None,
                single: dict[str, Any]) -> dict[str, Any]:
    """One event (quantity + fields) or several (``events``, each a dict of track()'s fields)."""
    if events is None:
        if quantity is None:
            raise ValueError("settle needs quantity or events")
        items = [finalize(build_event(customer=customer, meter=meter, quantity=quantity, **single))]
    else:
        items = [finalize(build_event(**{"customer": customer, "meter": meter, **dict(item)})) for item in events]
    return {"customer": customer, "events": items}


def raise_rejections(answer: Any) -> None:
    """A settle answers 200 with per-event results: a refused event raises (LimitExceeded for a 402 code)."""
    for result in answer.get("results", []) if isinstance(answer, dict) else []:
        if isinstance(result, dict) and result.get("status") == "rejected":
            error: dict[str, Any] = result["error"] if isinstance(result.get("error"), dict) else {}
            code = error.get("code")
            status = 402 if code in LIMIT_CODES else 409 if code == "idempotency_conflict" else 422
            raise APIError.from_body(status, {"error": error})


class _Base:
    def __init__(self, answer: dict[str, Any], body: dict[str, Any]) -> None:
        self.id: str = body["reservation_id"]
        self.customer: str = body["customer"]
        self.meter: str = body["meter"]
        self.quantity: str = body["quantity"]
        self.expires_at: str | None = answer.get("expires_at")
        self.data = answer
        self.state = "pending"
        self.settlement: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<Reservation {self.id} {self.customer}/{self.meter} {self.quantity} {self.state}>"


class Reservation(_Base):
    """``with tg.reserve(...) as r: r.settle(quantity=...)``; unsettled or on an exception it is released."""

    def __init__(self, call: Call, answer: dict[str, Any], body: dict[str, Any]) -> None:
        super().__init__(answer, body)
        self._call = call

    def settle(self, quantity: Quantity | None = None, *, events: Sequence[Mapping[str, Any]] | None = None,
               **fields: Any) -> dict[str, Any]:
        """Post the actual usage (``dimensions``, ``trace``, ``project``, ``event_id``... as in track()) and
        release the rest of the hold. Raises LimitExceeded if the server refused an event."""
        body = settle_body(self.customer, self.meter, quantity, events, fields)
        answer: dict[str, Any] = self._call("POST", f"{RESERVATIONS_PATH}/{self.id}/settle", body)
        self.state, self.settlement = "settled", answer
        raise_rejections(answer)
        return answer

    def release(self) -> None:
        """Give the hold back (nothing is billed)."""
        if self.state != "pending":
            return
        try:
            self._call("POST", f"{RESERVATIONS_PATH}/{self.id}/release", {"customer": self.customer})
        except APIError as exc:
            if exc.code != "reservation_closed":
                raise
        self.state = "released"

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.state == "pending":
            try:
                self.release()
            except Exception:
                if exc is None:
                    raise
                log.exception("tollgate: releasing reservation %s failed (it expires by itself)", self.id)


class AsyncReservation(_Base):
    """``async with tg.reserve(...) as r: await r.settle(quantity=...)``."""

    def __init__(self, call: AsyncCall, answer: dict[str, Any], body: dict[str, Any]) -> None:
        super().__init__(answer, body)
        self._call = call

    async def settle(self, quantity: Quantity | None = None, *, events: Sequence[Mapping[str, Any]] | None = None,
                     **fields: Any) -> dict[str, Any]:
        body = settle_body(self.customer, self.meter, quantity, events, fields)
        answer: dict[str, Any] = await self._call("POST", f"{RESERVATIONS_PATH}/{self.id}/settle", body)
        self.state, self.settlement = "settled", answer
        raise_rejections(answer)
        return answer

    async def release(self) -> None:
        if self.state != "pending":
            return
        try:
            await self._call("POST", f"{RESERVATIONS_PATH}/{self.id}/release", {"customer": self.customer})
        except APIError as exc:
            if exc.code != "reservation_closed":
                raise
        self.state = "released"

    async def __aenter__(self) -> AsyncReservation:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.state == "pending":
            try:
                await self.release()
            except Exception:
                if exc is None:
                    raise
                log.exception("tollgate: releasing reservation %s failed (it expires by itself)", self.id)


class PendingReservation:
    """What AsyncTollgate.reserve() returns: ``await`` it, or use it in ``async with`` directly."""

    def __init__(self, make: Callable[[], Awaitable[AsyncReservation]]) -> None:
        self._make = make
        self._reservation: AsyncReservation | None = None

    def __await__(self) -> Generator[Any, None, AsyncReservation]:
        return self._make().__await__()

    async def __aenter__(self) -> AsyncReservation:
        self._reservation = await self._make()
        return self._reservation

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._reservation is not None:
            await self._reservation.__aexit__(kind, exc, tb)
