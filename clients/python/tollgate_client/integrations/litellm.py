"""A LiteLLM callback: every call LiteLLM completes becomes an input and an output event (its ``usage``), and on
the LiteLLM proxy the worst case can be reserved before the call (a ``LimitExceeded`` there refuses it before
the provider is paid).

    import litellm
    from tollgate_client.integrations.litellm import TollgateCallback
    litellm.callbacks = [TollgateCallback(tg, customer="acme-co")]
    litellm.completion(model="gpt-4o", messages=[...], metadata={"tollgate_customer": "globex",
                                                                  "tollgate_run_id": "r1"})

Written against LiteLLM's documented ``CustomLogger`` interface (``log_success_event``, ``log_failure_event``,
their ``async_`` twins, and the proxy's ``async_pre_call_hook``); it subclasses ``CustomLogger`` when
``litellm`` is importable and is a plain object otherwise, so this module never needs LiteLLM installed.
The customer and run of a call: ``metadata={"tollgate_customer", "tollgate_run_id"}``, else
``billing_context(...)``, else the callback's own ``customer=`` (a string, or a callable of the request).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._core import new_id
from ..aio import AsyncTollgate
from ..client import Tollgate
from ._llm import (
    _CALL,
    Metering,
    Reserve,
    Usage,
    arelease_quietly,
    atrack_usage,
    release_quietly,
    reserve_async,
    track_usage,
)

log = logging.getLogger("tollgate_client")

if TYPE_CHECKING:
    _Base = object
else:
    try:
        from litellm.integrations.custom_logger import CustomLogger as _Base
    except ImportError:  # LiteLLM calls the documented methods on any object in litellm.callbacks
        _Base = object

Customer = str | Callable[[Mapping[str, Any]], str | None] | None
RESERVATION_KEY = "tollgate_reservation"
_REMEMBERED = 10_000  # call ids already billed (LiteLLM may report a call to a sync and an async hook)


def _get(obj: Any, name: str) -> Any:
    """A field of LiteLLM's response objects, which are attribute- and key-accessible (or a plain dict)."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(kwargs: Mapping[str, Any], response: Any) -> Usage | None:
    """The call's model and token counts: the (assembled, for a stream) response's ``usage``, else LiteLLM's
    standard logging payload; None when neither has any."""
    complete = kwargs.get("complete_streaming_response")
    response = complete if complete is not None else response
    usage = _get(response, "usage")
    model = _get(response, "model") or kwargs.get("model") or "unknown"
    if usage is not None:
        prompt, completion = _int(_get(usage, "prompt_tokens")), _int(_get(usage, "completion_tokens"))
    else:
        standard = kwargs.get("standard_logging_object") or {}
        prompt, completion = _int(standard.get("prompt_tokens")), _int(standard.get("completion_tokens"))
    if not prompt and not completion:
        return None
    return Usage(model=str(model), input_tokens=prompt, output_tokens=completion)


def _metadata(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    params = kwargs.get("litellm_params") or {}
    found = params.get("metadata") if isinstance(params, Mapping) else None
    found = found if isinstance(found, dict) else kwargs.get("metadata")
    return found if isinstance(found, dict) else {}


class TollgateCallback(_Base):
    """``litellm.callbacks = [TollgateCallback(tg, customer=...)]``. ``reserve`` (True, an int, or a callable
    of the request) reserves in the LiteLLM proxy's pre-call hook and settles with the usage; elsewhere the
    usage is tracked. ``tollgate`` may be a Tollgate or an AsyncTollgate (the async hooks await it)."""

    def __init__(self, tollgate: Tollgate | AsyncTollgate, *, customer: Customer = None, meter: str = "llm_tokens",
                 run_id: str | None = None, reserve: Reserve = None, dimensions: Mapping[str, str] | None = None,
                 fail_open: bool = True) -> None:
        super().__init__()
        self.metering = Metering(tollgate, customer=customer if isinstance(customer, str) else None, meter=meter,
                                 provider="litellm", run_id=run_id, reserve=reserve, dimensions=dict(dimensions or {}),
                                 fail_open=fail_open)
        self.customer = customer
        self._held: dict[str, Any] = {}  # reservations made in the pre-call hook, by the key put in the metadata
        self._billed: OrderedDict[str, None] = OrderedDict()

    # --- who and what ----------------------------------------------------------------------------------
    def who(self, request: Mapping[str, Any], metadata: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """(customer, run_id) of a call: its metadata, then billing_context, then this callback's own."""
        context_customer, context_run = _CALL.get()
        customer = metadata.get("tollgate_customer") or context_customer
        if not customer:
            customer = self.customer(request) if callable(self.customer) else self.customer
        run_id = metadata.get("tollgate_run_id") or context_run or self.metering.run_id
        return (str(customer) if customer else None), (str(run_id) if run_id else None)

    def _first_report(self, kwargs: Mapping[str, Any]) -> bool:
        """False for a call already billed (by its ``litellm_call_id``) or a stream not finished yet."""
        if kwargs.get("stream") and kwargs.get("complete_streaming_response") is None:
            return False  # a chunk of a stream: its end is reported with the assembled response
        call_id = kwargs.get("litellm_call_id")
        if not isinstance(call_id, str):
            return True
        if call_id in self._billed:
            return False
        self._billed[call_id] = None
        if len(self._billed) > _REMEMBERED:
            self._billed.popitem(last=False)
        return True

    def _call(self, kwargs: Mapping[str, Any], response: Any) -> tuple[str | None, str | None, Usage | None, Any]:
        metadata = _metadata(kwargs)
        customer, run_id = self.who(kwargs, metadata)
        key = metadata.get(RESERVATION_KEY)
        reservation = self._held.pop(key, None) if isinstance(key, str) else None
        return customer, run_id, usage_of(kwargs, response), reservation

    # --- LiteLLM's hooks ---------------------------------------------------------------------------------
    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        if not self._first_report(kwargs):
            return
        customer, run_id, usage, reservation = self._call(kwargs, response_obj)
        if customer is None:
            log.warning("tollgate: a LiteLLM call without a customer: nothing tracked")
            return
        track_usage(self.metering, customer, run_id, usage, reservation)

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        if not self._first_report(kwargs):
            return
        customer, run_id, usage, reservation = self._call(kwargs, response_obj)
        if customer is None:
            log.warning("tollgate: a LiteLLM call without a customer: nothing tracked")
            return
        await atrack_usage(self.metering, customer, run_id, usage, reservation)

    def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        """The call failed: nothing is billed, and a hold made for it is given back."""
        reservation = self._call(kwargs, None)[3]
        if reservation is not None:
            release_quietly(reservation)

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        reservation = self._call(kwargs, None)[3]
        if reservation is not None:
            await arelease_quietly(reservation)

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: str) -> dict[str, Any]:
        """The LiteLLM proxy's hook before the call: reserve its worst case (``LimitExceeded`` refuses the call
        before the provider is contacted); the success or failure hook settles or releases it."""
        if self.metering.reserve is None or self.metering.reserve is False:
            return data
        metadata = data.setdefault("metadata", {})
        customer, _ = self.who(data, metadata)
        if customer is None:
            return data
        reservation = await reserve_async(self.metering, customer, data)
        if reservation is not None:
            key = new_id()
            metadata[RESERVATION_KEY] = key
            self._held[key] = reservation
        return data


__all__ = ["RESERVATION_KEY", "TollgateCallback", "usage_of"]
