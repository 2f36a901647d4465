"""The project's URLs and error handlers, plus views that fail on purpose, under /api/ and outside it."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.http import HttpRequest, HttpResponse
from django.urls import path

from portal.urls import handler400, handler403, handler404, handler500
from portal.urls import urlpatterns as project_urls


def _deny(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied


def _suspicious(request: HttpRequest) -> HttpResponse:
    raise SuspiciousOperation("a forged value")


def _boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a bug")


def _form(request: HttpRequest) -> HttpResponse:  # CSRF-protected, as every non-API POST
    return HttpResponse("ok")


failing = [path("deny", _deny), path("suspicious", _suspicious), path("boom", _boom), path("form", _form)]
urlpatterns = [path("api/v1/test/", (failing, "api-test", "api-test")), path("test/", (failing, "test", "test")),
               *project_urls]
__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]
