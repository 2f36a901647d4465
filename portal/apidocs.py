"""Swagger UI at ``/api/docs``. Its page is a template; DRF's ``OPTIONS`` answer (metadata) has no template
to render into, so ``OPTIONS`` answers the allowed methods with an empty body instead of a 500.

The split view serves the start script from ``/api/docs?script`` rather than inline, and ``apidocs.html``
moves drf-spectacular's inline ``<style>`` into a file: the page holds under the Content-Security-Policy."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework.request import Request


class ApiDocsView(SpectacularSwaggerSplitView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    template_name = "apidocs.html"

    def options(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:  # type: ignore[override]
        return HttpResponse(status=200, headers={"Allow": "GET, HEAD, OPTIONS"})
