"""A downstream call's response, its request and the request's body are freed when the caller
drops the response, not later by the cyclic garbage collector (``ml_pipeline.client.downstream.
unbound``): httpx binds a response's stream back to the response, and the cycle kept 9 MB uploads
alive on postprocess after their requests had ended (tests/integration/test_edge.py measures
the memory). Checked with the collector off, on both transports, through a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import Iterator

import pytest

from support.downstreams import model_downstream
from support.faulty import read_request, tcp_server

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request on the connection (keep-alive) with a small body."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
            await writer.drain()
    writer.close()


@pytest.mark.parametrize("http_transport", ["httpx", "aiohttp"])
@pytest.mark.parametrize("call", ["post", "is_ready"])
async def test_the_response_and_its_request_go_when_the_caller_drops_them(http_transport, call):
    async with tcp_server(answer_ok) as url:
        port = int(url.rsplit(":", 1)[1])
        d = model_downstream(f"http://model:{port}", ["127.0.0.1"], http_transport=http_transport)
        try:
            with no_cyclic_gc():
                if call == "post":
                    response = await d.post("/predict", content=b"\0" * 1_000_000)
                    assert response.text == "ok"
                    gone = [weakref.ref(response), weakref.ref(response.request)]
                    del response
                else:
                    gone = []
                    original = d._client.get

                    async def get(*args, **kwargs):  # keeps only weak references to what it returns
                        response = await original(*args, **kwargs)
                        gone.extend([weakref.ref(response), weakref.ref(response.request)])
                        return response

                    d._client.get = get
                    assert (await d.is_ready(2))[0]
                    assert gone
                assert [ref() for ref in gone] == [None] * len(gone)
        finally:
            await d.aclose()
