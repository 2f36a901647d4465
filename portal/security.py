"""The Content-Security-Policy header (``TOLLGATE_CSP``, settings.py) on every answer that has none of its own.

The pages are written for it: no inline script or style (htmx loads as a file, told not to add its own
``<style>``; the Swagger page loads its start script from ``/api/docs?script``; bars are SVG, not styled
``div``s), so a policy of ``'self'`` only holds. Django 6 has this built in; until then, this."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.header = ("Content-Security-Policy-Report-Only" if settings.TOLLGATE_CSP_REPORT_ONLY
                       else "Content-Security-Policy")
        self.policy = settings.TOLLGATE_CSP

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if self.policy and self.header not in response:
            response[self.header] = self.policy
        return response
