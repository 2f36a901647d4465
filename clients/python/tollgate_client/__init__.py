"""Tollgate's Python client: track usage events (batched, retried, optionally spooled to disk), reserve
before expensive work and settle after, read balances and usage. ``AsyncTollgate`` mirrors ``Tollgate``."""

from ._core import Settings
from ._emitter import Stats
from ._reservation import AsyncReservation, Reservation
from .aio import AsyncTollgate
from .client import Tollgate
from .errors import APIError, EventError, LimitExceeded, TollgateError, TollgateUnavailable

__version__ = "0.1.0"
__all__ = ["APIError", "AsyncReservation", "AsyncTollgate", "EventError", "LimitExceeded", "Reservation", "Settings",
           "Stats", "Tollgate", "TollgateError", "TollgateUnavailable", "__version__"]
