"""The SDK's tests run against the real Tollgate API (pytest-django's live server, in this process) through a
fault-injecting HTTP proxy of their own (sdk_fakes.py). The project's fixtures apply here too: its autouse ones
(caches, rate limit, ledger namespace, balanced books) and the customer and meter builders."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sdk_fakes import FaultProxy, Server

from billing.customers.services import api_key_create
from tests import conftest as project
from tests.factories import metered, subscribe

_books_balance = project._books_balance
_clear_cache = project._clear_cache
_ledger_namespace = project._ledger_namespace
_no_rate_limit = project._no_rate_limit
acme = project.acme
now = project.now
tokens_meter = project.tokens_meter


@pytest.fixture
def server(live_server: Any, transactional_db: None, acme: Any, tokens_meter: Any) -> Server:
    """The real API (live server), a customer ``acme-co`` and a sum meter ``llm_tokens``, with keys."""
    _, ingest = api_key_create(name="sdk ingest", scope="ingest", customer=None)
    _, admin = api_key_create(name="sdk admin", scope="admin", customer=None)
    return Server(live_server.url, ingest, admin)


@pytest.fixture
def proxy(server: Server) -> Iterator[FaultProxy]:
    p = FaultProxy(server.url)
    yield p
    p.close()


@pytest.fixture
def hard_limit(acme: Any, tokens_meter: Any) -> Callable[[str], None]:
    """Give acme-co a plan whose hard limit on llm_tokens is ``hard`` for this month."""
    def apply(hard: str) -> None:
        start = datetime.now(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
        subscribe(acme, "metered", start=start.replace(day=1), catalog_text=metered(hard=hard))

    return apply
