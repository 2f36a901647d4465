"""The ASGI and Django middlewares against the real API: reserve (or check) before the handler, settle what
the handler used after, bill nothing for a 5xx or an exception, and answer 402 JSON on LimitExceeded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from decimal import Decimal
from typing import Any

import httpx
import pytest
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import RequestFactory
from django.urls import path, set_urlconf
from sdk_fakes import FaultProxy, Server, stored_ids
from tollgate_client import AsyncTollgate, LimitExceeded, Tollgate, TollgateUnavailable
from tollgate_client.integrations import django as tollgate_django
from tollgate_client.integrations.asgi import TollgateMiddleware

FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_max": 0.2, "flush_interval": 0.05}
CALLED: list[str] = []


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: /tokens bills 5, /fail answers 500, /boom raises, /limit raises LimitExceeded."""
    CALLED.append(scope["path"])
    metered = scope.get("state", {}).get("tollgate")
    if scope["path"] == "/boom":
        raise RuntimeError("handler broke")
    if scope["path"] == "/limit":
        raise LimitExceeded(402, "budget_exceeded", "The budget is spent.", details={"budget": "b1"})
    if scope["path"] == "/tokens" and metered is not None:
        metered.quantity = 5
        metered.dimensions = {"route": "tokens"}
    status = 500 if scope["path"] == "/fail" else 200
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def header_customer(scope: MutableMapping[str, Any]) -> str | None:
    return dict(scope["headers"]).get(b"x-customer", b"").decode() or None


def test_asgi_middleware_reserves_settles_releases_and_answers_402(server: Server, hard_limit: Any) -> None:
    hard_limit("10")
    CALLED.clear()

    async def main() -> tuple[list[int], dict[str, Any], dict[str, Any]]:
        async with AsyncTollgate(base_url=server.url, api_key=server.admin_key, **FAST) as tg:
            metered = TollgateMiddleware(app, tg, customer=header_customer, meter="llm_tokens",
                                         quantity=lambda scope: 9 if scope["path"] == "/big" else 1)
            transport = httpx.ASGITransport(app=metered)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                who = {"x-customer": "acme-co"}
                statuses = [(await http.get(p, headers=who)).status_code for p in ("/", "/tokens", "/fail")]
                with pytest.raises(RuntimeError):
                    await http.get("/boom", headers=who)
                limit = await http.get("/limit", headers=who)
                big = await http.get("/big", headers=who)  # 6 used, 9 more would pass the hard limit of 10
                statuses += [limit.status_code, big.status_code, (await http.get("/")).status_code]
            return statuses, limit.json(), big.json()

    statuses, limit, big = asyncio.run(main())
    assert statuses == [200, 200, 500, 402, 402, 200]
    assert limit == {"error": {"code": "budget_exceeded", "message": "The budget is spent.", "budget": "b1"}}
    assert big["error"]["code"] == "quota_exceeded" and big["error"]["remaining"] == "4"
    assert "/big" not in CALLED  # refused before the handler
    quota = server.get("/api/v1/customers/acme-co/balance")["quotas"][0]
    assert Decimal(quota["used"]) == 6 and Decimal(quota["reserved"]) == 0
    assert len(stored_ids()) == 2


def view(request: HttpRequest) -> HttpResponse:
    if request.path == "/limit":
        raise LimitExceeded(402, "paused", "The customer is paused.")
    if request.path == "/fail":
        return HttpResponse("no", status=500)
    metered = getattr(request, "tollgate", None)  # absent when the request is not metered
    if metered is not None:
        metered.quantity = 3
    return JsonResponse({"ok": True})


urlpatterns = [path("ok", view), path("limit", view), path("fail", view)]


def django_get(url: str, customer: str | None = "acme-co") -> HttpResponse:
    """Through Django's own handler and the configured MIDDLEWARE (this module as the request's urlconf)."""
    handler = BaseHandler()
    handler.load_middleware()
    request = RequestFactory().get(url, headers={"X-Customer": customer} if customer else None)
    request.urlconf = __name__
    try:
        response = handler.get_response(request)
    finally:
        set_urlconf(None)  # the request's urlconf is thread-local: later tests in this thread must not see it
    assert isinstance(response, HttpResponse)
    return response


@pytest.mark.parametrize("mode", ["reserve", "check", "track"])
def test_django_middleware_bills_what_the_view_used(server: Server, hard_limit: Any, settings: Any, mode: str) -> None:
    hard_limit("10")
    settings.MIDDLEWARE = ["tollgate_client.integrations.django.TollgateMiddleware"]
    settings.TOLLGATE_URL, settings.TOLLGATE_API_KEY = server.url, server.admin_key
    settings.TOLLGATE_MIDDLEWARE = {"customer": lambda request: request.headers.get("X-Customer"), "meter": "llm_tokens",
                                    "mode": mode}
    tollgate_django._clients.clear()
    try:
        assert [django_get(u).status_code for u in ("/ok", "/ok", "/ok", "/fail")] == [200, 200, 200, 500]
        refused = django_get("/limit")
        assert refused.status_code == 402 and json.loads(refused.content)["error"]["code"] == "paused"
        assert django_get("/ok", customer=None).status_code == 200  # not metered
        tg = tollgate_django.shared_client()
        assert tg.flush(timeout=20)
        used = Decimal(tg.balance("acme-co")["quotas"][0]["used"])
        assert used == 9
        settings.TOLLGATE_MIDDLEWARE = {**settings.TOLLGATE_MIDDLEWARE, "quantity": 2}  # 1 left: 2 does not fit
        blocked = django_get("/ok")
        if mode == "track":  # neither checked nor held: the view runs (and its event is refused by the limit)
            assert blocked.status_code == 200
        else:
            assert blocked.status_code == 402 and json.loads(blocked.content)["error"]["code"] == "quota_exceeded"
        assert tg.flush(timeout=20)
        assert Decimal(tg.balance("acme-co")["quotas"][0]["reserved"]) == 0
    finally:
        for client in tollgate_django._clients.values():
            client.close()
        tollgate_django._clients.clear()


def test_the_django_middleware_needs_a_customer_callable(settings: Any) -> None:
    settings.TOLLGATE_MIDDLEWARE = {}
    with pytest.raises(ValueError, match="customer"):
        tollgate_django.TollgateMiddleware(lambda request: HttpResponse(), tollgate=Tollgate(base_url="http://x", api_key="k"))


def test_an_unreachable_tollgate_lets_requests_through_and_queues_their_usage(server: Server, proxy: FaultProxy) -> None:
    async def main() -> int:
        async with AsyncTollgate(base_url=proxy.url, api_key=server.admin_key, max_attempts=2, **FAST) as tg:
            open_app = TollgateMiddleware(app, tg, customer=header_customer, meter="llm_tokens")
            closed_app = TollgateMiddleware(app, tg, customer=header_customer, meter="llm_tokens", fail_open=False)
            proxy.down = True
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=open_app), base_url="http://app") as http:
                status = (await http.get("/tokens", headers={"x-customer": "acme-co"})).status_code
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=closed_app), base_url="http://app") as http:
                with pytest.raises(TollgateUnavailable):
                    await http.get("/", headers={"x-customer": "acme-co"})
            proxy.down = False
            assert await tg.flush(timeout=20)
            return status

    assert asyncio.run(main()) == 200
    listed = server.get("/api/v1/events", customer="acme-co")["data"]
    assert [(e["quantity"], e["dimensions"]) for e in listed] == [("5", {"route": "tokens"})]
