"""Downstreams that fail the way a replica can, each a real socket on 127.0.0.1 yielding its base
URL: a closed port, a connection reset or closed after the request, a hung server, an answer cut
short or not HTTP at all."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

from support.apps import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def tcp_server(handle: Handler) -> AsyncIterator[str]:
    """``handle`` serving each connection (asyncio streams) until the block ends."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """One HTTP/1.1 request with a Content-Length body: (request line, lower-cased headers, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0].encode(), headers, body


@contextlib.asynccontextmanager
async def closed_port() -> AsyncIterator[str]:
    """Nobody listens: the connection is refused."""
    yield f"http://127.0.0.1:{free_port()}"


@contextlib.asynccontextmanager
async def drops_the_connection() -> AsyncIterator[str]:
    """Accepts, reads the request's first bytes, closes without an answer (a replica dying mid-request)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.transport.abort()  # a reset, not a clean close

    async with tcp_server(handle) as url:
        yield url


@contextlib.asynccontextmanager
async def closes_after_reading() -> AsyncIterator[str]:
    """Reads the whole request, then closes cleanly without an answer."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async with tcp_server(handle) as url:
        yield url


@contextlib.asynccontextmanager
async def never_answers() -> AsyncIterator[str]:
    """Accepts connections (the kernel's backlog) but never answers: a hung replica."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        yield f"http://127.0.0.1:{hung.getsockname()[1]}"


def answers_with(raw: bytes) -> Callable[[], contextlib.AbstractAsyncContextManager[str]]:
    """A downstream that reads the request, writes ``raw`` as its whole answer and closes."""

    @contextlib.asynccontextmanager
    async def downstream() -> AsyncIterator[str]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(raw)
            await writer.drain()
            writer.close()

        async with tcp_server(handle) as url:
            yield url

    return downstream


body_cut_short = answers_with(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
not_http = answers_with(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
