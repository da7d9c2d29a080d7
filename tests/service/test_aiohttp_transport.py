"""aiohttp under httpx's API (``ml_pipeline.client.aiohttp_transport``): for every failure a
downstream can cause, the same httpx error as httpx's own transport raises — the downstream
client decides by it whether another replica may be tried and what the end client is told — and
requests and answers that arrive byte for byte as httpx's own would send and read them."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from ml_pipeline.client.aiohttp_transport import AiohttpTransport, transport_for
from support.faulty import (
    body_cut_short,
    closed_port,
    closes_after_reading,
    drops_the_connection,
    never_answers,
    not_http,
    read_request,
    tcp_server,
)

pytestmark = pytest.mark.anyio

LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)


@contextlib.asynccontextmanager
async def client(kind: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = transport_for(kind, LIMITS)
    async with httpx.AsyncClient(transport=transport, limits=LIMITS, timeout=httpx.Timeout(0.5)) as c:
        yield c


FAILURES = {
    "refused": closed_port,
    "reset": drops_the_connection,
    "closed": closes_after_reading,
    "hung": never_answers,
    "cut_short": body_cut_short,
    "not_http": not_http,
}


async def error_of(kind: str, downstream) -> type[BaseException]:
    async with downstream() as url, client(kind) as c:
        with pytest.raises(httpx.TransportError) as err:
            await c.post(f"{url}/process", content=b"x" * 1000)
    if kind == "aiohttp":  # the operator's log line reads them (httpx's own ReadTimeout has none)
        assert str(err.value), f"{type(err.value).__name__} without words"
    return type(err.value)


@pytest.mark.parametrize("failure", FAILURES)
async def test_each_failure_is_the_error_httpx_itself_raises(failure):
    downstream = FAILURES[failure]
    assert await error_of("aiohttp", downstream) is await error_of("httpx", downstream)


async def test_the_mapping_keeps_what_the_downstream_client_decides_by():
    """What each failure means to ``Downstream``: nothing sent (another replica may take it), a
    hung replica, or a request that may have been worked on."""
    assert await error_of("aiohttp", closed_port) is httpx.ConnectError
    assert await error_of("aiohttp", never_answers) is httpx.ReadTimeout
    for dropped in (drops_the_connection, closes_after_reading, body_cut_short):
        error = await error_of("aiohttp", dropped)
        assert not issubclass(error, (httpx.ConnectError, httpx.ConnectTimeout)), error


async def test_requests_arrive_and_answers_are_read_as_with_httpx_s_own_transport():
    """A multipart upload and a 600 KB tensor arrive with the same headers and bytes; a gzip
    answer is decoded and its headers kept; the pool's connections are reused."""
    seen: list[tuple[bytes, dict[str, str], bytes]] = []
    connections = 0

    async def handle(reader, writer):
        nonlocal connections
        connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                request = await read_request(reader)
                seen.append(request)
                body = gzip.compress(json.dumps({"n": len(request[2])}).encode())
                writer.write(
                    b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                    b"x-model-replica: m-1\r\ncontent-length: %d\r\n\r\n" % len(body) + body
                )
                await writer.drain()
        writer.close()

    tensor = bytes(range(256)) * 2352  # 602,112 bytes, the 1×3×224×224 float32 tensor's size
    answers = {}
    async with tcp_server(handle) as url:
        for kind in ("httpx", "aiohttp"):
            async with client(kind) as c:
                for _ in range(3):
                    upload = await c.post(
                        f"{url}/process",
                        files={"file": ("c.jpg", b"\xff\xd8jpeg", "image/jpeg")},
                        headers={"traceparent": "00-1-2-01"},
                    )
                    sent = await c.post(f"{url}/predict", content=tensor, headers={"content-type": "application/x-npy"})
                answers[kind] = (upload.status_code, upload.json(), upload.headers["x-model-replica"], sent.json())
    assert answers["aiohttp"] == answers["httpx"] == (201, {"n": upload.json()["n"]}, "m-1", {"n": len(tensor)})
    assert connections == 2  # one kept-alive connection per client for its six requests
    by_kind = {"httpx": seen[:6], "aiohttp": seen[6:]}
    for a, b in zip(by_kind["httpx"], by_kind["aiohttp"], strict=True):
        assert without_boundary(*a) == without_boundary(*b)


def without_boundary(line: bytes, headers: dict[str, str], body: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """A request with its multipart boundary (random per request) replaced by a fixed one."""
    boundary = headers.get("content-type", "").partition("boundary=")[2]
    if boundary:
        headers = {**headers, "content-type": headers["content-type"].replace(boundary, "B")}
        body = body.replace(boundary.encode(), b"B")
    return line, headers, body


async def test_the_session_is_closed_with_the_client():
    transport = AiohttpTransport(LIMITS)
    async with tcp_server(lambda r, w: _answer_once(r, w)) as url:
        async with httpx.AsyncClient(transport=transport) as c:
            assert (await c.get(f"{url}/ready")).status_code == 204
            session = transport._session
            assert session is not None and not session.closed
    assert session.closed and transport._session is None


async def _answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    await writer.drain()
    writer.close()
