"""The client's pure parts, no server: configuration, exact quantities, Retry-After, backoff bounds, the
error body, and the integrations' estimate."""

from __future__ import annotations

import email.utils
import os
import time
from decimal import Decimal
from typing import Any

import pytest
from tollgate_client import APIError, LimitExceeded, Tollgate
from tollgate_client._core import (
    backoff_delay,
    build_event,
    finalize,
    make_settings,
    new_id,
    quantity_text,
    retry_after_seconds,
)
from tollgate_client.integrations._llm import DEFAULT_MAX_TOKENS, estimate_tokens


def test_settings_come_from_the_environment_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLGATE_URL", "http://tollgate.test/")
    monkeypatch.setenv("TOLLGATE_API_KEY", "tg_env")
    with Tollgate() as tg:
        assert (tg.settings.base_url, tg.settings.api_key) == ("http://tollgate.test", "tg_env")
    monkeypatch.delenv("TOLLGATE_API_KEY")
    with pytest.raises(ValueError, match="api_key"):
        Tollgate()
    with pytest.raises(ValueError, match="batch_size"):
        make_settings("http://x", "k", batch_size=1001)
    with pytest.raises(ValueError, match="spool_path"):
        make_settings("http://x", "k", overflow="spool")
    assert make_settings("http://x", "k", spool_path="/tmp/s.sqlite3").overflow == "spool"


def test_quantities_are_exact_decimal_text() -> None:
    assert [quantity_text(q) for q in (0.1, 3, Decimal("1.50"), "2.25", 1e-7)] == ["0.1", "3", "1.50", "2.25", "1E-7"]
    with pytest.raises(TypeError):
        quantity_text(True)
    event = build_event(customer="c", meter="m", quantity=1, trace={"run_id": "r"})
    assert isinstance(event["timestamp"], float)  # the clock read on the caller's thread, written out when sent
    text = finalize(event)["timestamp"]
    assert text.endswith("+00:00") and finalize(event)["timestamp"] == text and event["trace"] == {"run_id": "r"}
    assert build_event(customer="c", meter="m", event_id="mine")["event_id"] == "mine"


def test_ids_are_unique_and_a_forked_child_draws_its_own_prefix() -> None:
    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and len({i[:24] for i in ids}) == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what a gunicorn worker forked from a preloaded app would draw
        os.write(write, new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    os.close(write)
    assert child[:24] != new_id()[:24] and child not in ids


def test_retry_after_seconds_or_http_date_and_backoff_bounds() -> None:
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (retry_after_seconds(later) or 0) <= 31
    settings = make_settings("http://x", "k", backoff_base=0.5, backoff_max=30)
    delays = [backoff_delay(attempt, settings) for attempt in range(12)]
    assert 0.25 <= delays[0] <= 0.5 and all(d <= 30 for d in delays) and delays[-1] >= 15
    assert backoff_delay(0, settings, retry_after=7) == 7


def test_the_error_body_becomes_the_right_exception() -> None:
    body: dict[str, Any] = {"error": {"code": "spend_cap_exceeded", "message": "Cap.", "remaining": "0", "unit": ""}}
    err = APIError.from_body(402, body)
    assert isinstance(err, LimitExceeded) and err.code == "spend_cap_exceeded" and err.details == {"remaining": "0", "unit": ""}
    plain = APIError.from_body(422, {"error": {"code": "validation_error", "message": "Bad.", "fields": {"q": ["x"]}}})
    assert type(plain) is APIError and plain.fields == {"q": ["x"]}
    assert APIError.from_body(502, "<html>").code == "http_error"


def test_the_reservation_estimate_bounds_prompt_and_output() -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "x" * 100}], "max_tokens": 50}
    assert estimate_tokens(request) >= 100 // 2 + 50
    assert estimate_tokens({"messages": []}) >= DEFAULT_MAX_TOKENS


def test_an_event_tracked_after_an_idle_spell_goes_out_after_flush_interval_without_a_flush() -> None:
    """The age trigger works whenever the queue fills from empty, not only for a client's first event."""
    import httpx

    sent: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(time.monotonic())
        return httpx.Response(200, json={"results": [{"status": "accepted"}]})

    with Tollgate(base_url="http://tollgate.test", api_key="tg_x", flush_interval=0.1,
                  transport=httpx.MockTransport(answer)) as tg:
        for n in range(2):
            tracked = time.monotonic()
            tg.track(customer="acme-co", meter="llm_tokens", quantity=1)
            deadline = time.monotonic() + 5
            while len(sent) < n + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(sent) == n + 1 and sent[-1] - tracked >= 0.1
            time.sleep(0.3)  # idle: both senders back to waiting for work


def test_the_clock_is_written_out_as_isoformat_does() -> None:
    from datetime import datetime, timezone

    from tollgate_client._core import clock_text

    for value in (0.0, 1.5, 1733580000.25, 1733580059.999999, 4102444799.5):
        expected = datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="microseconds")
        assert clock_text(value) == expected
