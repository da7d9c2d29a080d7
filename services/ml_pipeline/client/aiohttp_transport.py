"""aiohttp's connection handling under httpx's API (``DOWNSTREAM_HTTP_TRANSPORT=aiohttp``).

The downstream client keeps httpx's API, its OpenTelemetry instrumentation (which wraps the
transport, so ``traceparent`` and the client spans are unchanged), the balancer, retries and
deadlines; only the sockets, the HTTP/1.1 writing and the parsing are aiohttp's, which costs the
calling service less CPU per request (docs/profiling.md).

Why not httpx-aiohttp: it maps aiohttp's errors by their base classes, so a refused connection and
a connection dropped mid-answer both arrive as ``httpx.ConnectTimeout``. The downstream client
decides by that class whether a call may go to another replica (nothing was sent) and what the
end client is told, so here each aiohttp error becomes the httpx error httpx's own transport
raises for the same event.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx

# Most specific first: the first class that matches decides (ClientConnectorError is an OSError
# like a reset mid-request; every ServerTimeoutError is a ServerConnectionError).
ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError], str], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout, ""),  # sock_connect: no TCP connection in time
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout, ""),  # sock_read: no byte for that long
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout, ""),
    (aiohttp.ClientConnectorError, httpx.ConnectError, ""),  # refused, unreachable, no such host
    # the peer closed before answering: httpx says RemoteProtocolError("Server disconnected …")
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError, "Server disconnected without sending a response."),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError, ""),  # a body cut short or malformed
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError, ""),  # an answer that is not HTTP
    (aiohttp.ClientOSError, httpx.ReadError, ""),  # reset while sending or reading
    (aiohttp.ClientConnectionResetError, httpx.ReadError, ""),
    (aiohttp.ClientError, httpx.NetworkError, ""),
)


def httpx_error(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.TransportError:
    """The httpx error for an aiohttp one, carrying aiohttp's words (or httpx's, where aiohttp has none)."""
    for aiohttp_class, httpx_class, words in ERRORS:
        if isinstance(exc, aiohttp_class):
            return httpx_class(str(exc) or words or type(exc).__name__, request=request)
    raise AssertionError("aiohttp.ClientError is the last entry")  # pragma: no cover


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (created on first use, inside the running loop) with a pool of
    ``limits.max_connections`` keep-alive connections; each answer is read whole, as the
    downstream client reads every answer whole anyway. A wait for a free pooled connection is
    bounded by the caller (``Downstream``'s attempt timeout), not reported as a connect timeout."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=self._limits.keepalive_expiry or 5.0,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # a service-to-service client keeps no cookies
            auto_decompress=False,  # httpx decodes by Content-Encoding, as with its own transport
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),  # httpx's headers are sent as they are
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._new_session()
        timeout = request.extensions.get("timeout", {})
        headers = request.headers.multi_items()
        body: bytes | None = await request.aread() or None
        if body is not None and "transfer-encoding" in request.headers:  # a stream httpx could not size
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        try:
            async with self._session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body,
                allow_redirects=False,
                # No `connect=`: aiohttp would report a wait for a pooled connection as a connect
                # timeout, which ejects a healthy replica. The caller's attempt timeout bounds that
                # wait, as httpx's pool timeout (the attempt's) does.
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
                ),
            ) as answer:
                content = await answer.read()
                return httpx.Response(
                    answer.status,
                    headers=list(answer.raw_headers),
                    content=content,
                    request=request,
                    extensions=_extensions(answer),
                )
        except aiohttp.ClientError as exc:
            raise httpx_error(exc, request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _extensions(answer: aiohttp.ClientResponse) -> dict[str, Any]:
    extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
    if answer.reason:
        extensions["reason_phrase"] = answer.reason.encode()
    return extensions


def transport_for(kind: str, limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
    """What carries an httpx client's requests for ``DOWNSTREAM_HTTP_TRANSPORT``: aiohttp's
    (``aiohttp``), or None for httpx's own (``httpx``; the client makes it with ``limits``)."""
    return AiohttpTransport(limits) if kind == "aiohttp" else None
