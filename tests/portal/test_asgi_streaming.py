"""Under ASGI (portal.asgi) a synchronous response body (a static file from WhiteNoise, a CSV export) is sent
chunk by chunk, read in the request's thread, with none of the warnings Django's own fallback prints for each
such response while it reads the whole body into memory first."""

from __future__ import annotations

import asyncio
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from billing.customers.services import api_key_create
from portal.asgi import application
from tests import factories

ROOT = Path(__file__).resolve().parents[2]


def _get(path: str, **kwargs: Any) -> tuple[httpx.Response, list[bytes]]:
    async def main() -> tuple[httpx.Response, list[bytes]]:
        transport = httpx.ASGITransport(app=application)  # type: ignore[arg-type]  # Django's looser signature
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client, \
                client.stream("GET", path, **kwargs) as response:
            chunks = [chunk async for chunk in response.aiter_raw()]
        return response, chunks

    return asyncio.run(main())


def test_a_static_file_is_streamed_without_the_synchronous_iterator_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response, chunks = _get("/static/css/tollgate.css")
    assert response.status_code == 200
    assert b"".join(chunks) == (ROOT / "static/css/tollgate.css").read_bytes()
    assert [str(w.message) for w in caught if "synchronous iterators" in str(w.message)] == []


def test_a_body_larger_than_a_chunk_arrives_whole() -> None:
    import django_htmx

    source = Path(django_htmx.__file__).parent / "static/django_htmx/htmx-2.js"  # over 64 KiB: several chunks
    assert source.stat().st_size > 2 * 65536
    response, chunks = _get("/static/django_htmx/htmx-2.js")
    assert response.status_code == 200 and b"".join(chunks) == source.read_bytes()


@pytest.mark.django_db(transaction=True)  # the request's database work runs in a thread of its own
def test_a_csv_export_whose_generator_queries_the_database_streams_whole_under_asgi(acme: Any, tokens_meter: Any) -> None:
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    models = ("gpt-4o", "gpt-4o-mini", "claude-sonnet")
    factories.send(*(factories.event(f"e{i}", start + timedelta(hours=i // 3), str(i + 1),
                                     dimensions={"model": models[i % 3]}) for i in range(1500)),
                   now=datetime(2026, 11, 30, tzinfo=timezone.utc))
    _, raw = api_key_create(name="reader", scope="read", customer=acme)
    params = {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z", "granularity": "hour", "group_by": "model"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response, chunks = _get("/api/v1/customers/acme-co/usage.csv", params=params,
                                headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200, b"".join(chunks)[:500]
    lines = b"".join(chunks).decode().splitlines()
    assert lines[0] == "meter,start,end,model,quantity" and len(lines) == 1 + 1500  # one row per hour and model
    assert sum(int(line.rsplit(",", 1)[1]) for line in lines[1:]) == sum(range(1, 1501))
    assert len(b"".join(chunks)) > 65536  # more than one chunk of the generator's
    assert [str(w.message) for w in caught if "synchronous iterators" in str(w.message)] == []
