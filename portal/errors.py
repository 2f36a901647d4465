"""HTML pages answer an ``ApiError`` raised below them (a service's 503 ``rollups_drift``, say) with its
status and message in a page, as the API answers it with the contract's error body; only what nothing
handles is a 500. The ledger's ``LedgerUnavailable`` is a 503 with Retry-After, as in the API. API paths
are left to DRF's handler (``billing.common.errors``)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from billing.common.errors import ApiError
from ledger.backends.base import LedgerUnavailable


class HtmlApiErrorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if request.path.startswith("/api/"):
            return None
        if isinstance(exception, LedgerUnavailable):
            response = render(request, "error.html", {"status": 503, "code": "ledger_unavailable",
                                                      "message": "The ledger did not answer; try again in a moment."},
                              status=503)
            response["Retry-After"] = "1"
            return response
        if not isinstance(exception, ApiError):
            return None
        response = render(request, "error.html", {"status": exception.status_code, "code": exception.code,
                                                  "message": exception.message}, status=exception.status_code)
        if exception.status_code == 503:
            response["Retry-After"] = "60"
        return response
