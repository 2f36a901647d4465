"""Who is acting, for the audit log, without threading an ``actor`` through every service: the request
(its API key or signed-in user, read when an entry is written, after DRF has authenticated), a named job
(``acting_as("system:period_close")``) or, by default, the system."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from billing.common.auth import Principal


@dataclass(frozen=True)
class Actor:
    type: str  # user | api_key | system
    id: str = ""
    label: str = ""


SYSTEM = Actor("system", "", "system")
_current: ContextVar[Callable[[], Actor] | None] = ContextVar("audit_actor", default=None)
_TYPED = re.compile(r"^(user|api_key|system):(.+)$")


def actor_parse(text: str) -> Actor:
    """The actor strings services have always taken: ``api_key:<pk>``, ``user:<pk>``, ``system[:<job>]``,
    or a name: a user's username when one has it, a job's name (``seed_demo``) otherwise."""
    text = (text or "").strip()
    if text in ("", "system"):
        return SYSTEM
    typed = _TYPED.match(text)
    if typed:
        return Actor(typed.group(1), typed.group(2), text)
    from django.contrib.auth import get_user_model

    pk = get_user_model().objects.filter(username=text).values_list("pk", flat=True).first()
    return Actor("user", str(pk), text) if pk is not None else Actor("system", text, text)


def actor_current() -> Actor:
    resolve = _current.get()
    return resolve() if resolve is not None else SYSTEM


def actor_resolve(actor: str | Actor | None) -> Actor:
    """An explicit actor wins; none, or the generic ``system`` a service defaults to, is whoever is acting."""
    if isinstance(actor, Actor):
        return actor
    if actor and actor != "system":
        return actor_parse(actor)
    return actor_current()


@contextmanager
def acting_as(actor: str | Actor) -> Iterator[Actor]:
    """Attribute the writes inside to ``actor`` (a command, a job, a test)."""
    resolved = actor if isinstance(actor, Actor) else actor_parse(actor)
    token = _current.set(lambda: resolved)
    try:
        yield resolved
    finally:
        _current.reset(token)


def actor_of_request(request: Any) -> Actor:
    """The API key DRF authenticated (it sets ``auth`` on the request it wraps), else the signed-in user."""
    principal = getattr(request, "auth", None)
    if isinstance(principal, Principal) and principal.api_key_id:
        return Actor("api_key", str(principal.api_key_id), f"api_key:{principal.api_key_id}")
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return Actor("user", str(user.pk), user.get_username())
    return SYSTEM


class AuditActorMiddleware:
    """Makes the request's caller the actor of every write the request makes."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:  # an HttpRequest: the domain names nothing of HTTP
        token = _current.set(lambda: actor_of_request(request))
        try:
            return self.get_response(request)
        finally:
            _current.reset(token)


_job_tokens: dict[str, Token[Callable[[], Actor] | None]] = {}


def job_started(task_id: str = "", task: Any = None, **_: Any) -> None:
    """Celery's task_prerun: a job's writes are the system's, named after the task."""
    name = getattr(task, "name", "") or "job"
    _job_tokens[task_id] = _current.set(lambda: Actor("system", name, name))


def job_finished(task_id: str = "", **_: Any) -> None:
    token = _job_tokens.pop(task_id, None)
    if token is not None:
        _current.reset(token)
