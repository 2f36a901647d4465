"""Under ASGI (portal.asgi) a synchronous response body (a static file from WhiteNoise, a CSV export) is sent
chunk by chunk, read in the request's thread, with none of the warnings Django's own fallback prints for each
such response while it reads the whole body into memory first."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import httpx

from portal.asgi import application

ROOT = Path(__file__).resolve().parents[2]


def _get(path: str) -> tuple[httpx.Response, list[bytes]]:
    async def main() -> tuple[httpx.Response, list[bytes]]:
        transport = httpx.ASGITransport(app=application)  # type: ignore[arg-type]  # Django's looser signature
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client, \
                client.stream("GET", path) as response:
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
