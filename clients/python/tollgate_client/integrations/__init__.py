"""Optional integrations; each imports its framework only when used, so the core needs httpx alone:
``.openai`` (wrap_openai), ``.anthropic`` (wrap_anthropic), ``.litellm`` (TollgateCallback), ``.asgi`` and
``.django`` (TollgateMiddleware).
``billing_context`` names the customer and run of the wrapped clients' calls made inside it."""

from ._llm import billing_context

__all__ = ["billing_context"]
