"""The ASGI entry point: ``gunicorn portal.asgi -k asgi`` or ``uvicorn portal.asgi:application``
(docs/deploy.md). The same site as portal.wsgi, but its requests resolve against portal.urls_asgi: the LLM
gateway's views are async there."""

import gc
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import cast

import django
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.http import HttpRequest, HttpResponseBase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# On PostgreSQL, connections come from a pool of the process (portal.settings, DATABASE_POOL_SIZE): a
# connection per request (below) would cost each call a backend start and ingest its prepared statements.
_pool_default = "DATABASE_POOL_SIZE" not in os.environ
if _pool_default:
    os.environ["DATABASE_POOL_SIZE"] = "10"
django.setup(set_prefix=False)  # as get_asgi_application() does (settings read: the variable has done its work)
if _pool_default:
    del os.environ["DATABASE_POOL_SIZE"]  # not inherited by processes started from this one

# Each request's database work runs in a thread of its own here (asgiref's per-request thread), so a
# connection kept for CONN_MAX_AGE would outlive its thread, never be reused, and pile up until PostgreSQL
# refuses new ones: under ASGI every connection is given back when its request ends (to the pool, if any).
for database in settings.DATABASES.values():
    database["CONN_MAX_AGE"] = 0


class Request(ASGIRequest):
    urlconf = "portal.urls_asgi"  # BaseHandler resolves a request against its own urlconf when it has one


_END = object()


def _next(iterator: Iterator[bytes]) -> object:
    return next(iterator, _END)


async def _in_thread(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    """A synchronous response body read one chunk at a time in the request's thread (thread_sensitive: a
    generator that queries the database keeps its view's connection). Django's own fallback reads the whole
    body into a list first, with a warning on every response: each static file (WhiteNoise), each CSV export."""
    iterator = iter(chunks)
    step = sync_to_async(_next, thread_sensitive=True)
    while (part := await step(iterator)) is not _END:
        yield cast(bytes, part)


class Handler(ASGIHandler):
    request_class = Request

    async def run_get_response(self, request: HttpRequest) -> HttpResponseBase:
        response = await super().run_get_response(request)
        if response.streaming and not response.is_async:  # type: ignore[attr-defined]  # streaming responses only
            response.streaming_content = _in_thread(response.streaming_content)  # type: ignore[attr-defined]
        return response


application = Handler()

# As in portal.wsgi: everything loaded so far lives as long as the process; out of the collector's
# generations, collections between requests scan only what requests allocate (a full collection over
# the ~130,000 objects of a loaded process costs milliseconds, several times a 1,000-event batch).
gc.freeze()
