"""The URLs an ASGI server serves (portal.asgi): the project's, with the gateway's async views in place of
its sync ones (under WSGI an async view would run in a loop of its own per request, and a stream could not
outlive it)."""

from django.urls import path

from portal import gateway_async
from portal.urls import handler400, handler403, handler404, handler500  # the same error answers under ASGI
from portal.urls import urlpatterns as wsgi_urlpatterns

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]

urlpatterns = [
    path("gateway/v1/chat/completions", gateway_async.chat_completions, name="gateway-chat-completions"),
    path("gateway/v1/embeddings", gateway_async.embeddings, name="gateway-embeddings"),
    *wsgi_urlpatterns,
]
