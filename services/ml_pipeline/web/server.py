"""The services' HTTP/1.1 server: uvicorn's httptools protocol with the defenses it lacks.

Any neighbour reaches a service's port (an edge proxy in front or not), and uvicorn alone:

* never closes a connection that sends nothing, or sends its headers a byte at a time (its
  keep-alive timer is reset by every read and only covers the idle time *between* requests), so
  such clients pile up until the process runs out of descriptors;
* buffers request headers of any size (httptools has no limit; uvicorn's only one,
  ``h11_max_incomplete_event_size``, is h11's): twenty 40 MB headers cost postprocess 1 GB;
* answers broken framing with a ``text/plain`` 400 and every answer with ``server: uvicorn``;
* logs every misbehaving connection, and asyncio logs every failed ``accept()`` once per backlog
  slot (CPython gh-151615): 125,000 ERROR lines in 30 s under a flood.

``HardenedHttpToolsProtocol`` is uvicorn's ``HttpToolsProtocol`` (same parser, same ASGI cycle,
``reset_contextvars`` and all) plus: a request's line and headers must arrive within
``header_read_timeout_s`` of its first byte — of the connection's start for its first request — or
the connection is closed (with a 408 envelope when part of a request came); they may not exceed
``max_header_bytes`` (431 envelope, connection closed, the rest never buffered); invalid HTTP gets
the 400 envelope. ``RateLimitedLog`` keeps the log readable: a few lines per interval per kind of
line, the next one let through says how many were dropped. ``uvicorn_config`` in ``cli`` puts it
all together (with ``server_header=False``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ml_pipeline.core.errors import BadRequest, RequestTimeout
from ml_pipeline.web.envelope import error_response

log = logging.getLogger("ml_pipeline.server")

HEADERS_TOO_LARGE = "headers_too_large"  # 431; the edge proxy answers with the same code

# Log lines of one kind let through per interval (each logger, each message template).
LOG_BURST = 5
LOG_INTERVAL_S = 10.0
# The loggers misbehaving connections write to: asyncio's accept errors, uvicorn's protocol
# warnings ("Unsupported upgrade request", …), and this module's.
CONNECTION_LOGGERS = ("asyncio", "uvicorn.error", "ml_pipeline.server")


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header-read timeout, a header size limit and the JSON
    error envelope for what it refuses. Configured per server by ``hardened_http_protocol``."""

    service: ClassVar[str] = ""
    header_read_timeout_s: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # the next bytes belong to a request line or headers
        self._head_bytes = 0  # of the request head being read
        self._head_timer: asyncio.TimerHandle | None = None

    # -- the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a fresh connection owes a request head: silence counts

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's ``data_received``, feeding the parser at most ``max_header_bytes`` of a head."""
        self._unset_keepalive_if_required()
        while data:
            if self._in_head:
                room = self.max_header_bytes - self._head_bytes
                if room <= 0:
                    self._refuse(
                        431,
                        HEADERS_TOO_LARGE,
                        f"the request line and headers are over the limit of {self.max_header_bytes} bytes",
                    )
                    return
                chunk, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
                self._head_bytes += len(chunk)
            else:
                chunk, data = data, b""
            try:
                self.parser.feed_data(chunk)
            except httptools.HttpParserError:
                self._refuse(400, BadRequest.code, "the request is not valid HTTP/1.1")
                return
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            if self.transport.is_closing():
                return

    # -- parser callbacks: where a head starts and ends

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a later request on a keep-alive connection: from its first byte
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True  # what comes next is the next request's head
        self._head_bytes = 0
        super().on_message_complete()

    # -- the header-read timeout

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.header_read_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head waits while we answer the request before it: not the client's delay.
            self._arm_head_timer()
            return
        if self._head_bytes == 0:
            log.info("closed a connection that sent no request within %s s", self.header_read_timeout_s)
            self.transport.close()
            return
        self._refuse(
            408,
            RequestTimeout.code,
            f"the request line and headers did not arrive within {self.header_read_timeout_s:g} s",
        )

    # -- refusals

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` with the error envelope and close the connection (what follows on it
        can no longer be trusted to be framed right)."""
        log.warning("refused a request: %s (%s)", message, code, extra={"status": status, "client": self.client})
        response = error_response(status, code, message, self.service)
        content = [STATUS_LINE[status]]
        headers = [*self.server_state.default_headers, *response.raw_headers, (b"connection", b"close")]
        for name, value in headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"\r\n", bytes(response.body)])
        self._disarm_head_timer()
        self.transport.write(b"".join(content))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's own refusal (it calls this for framing errors it finds elsewhere): the envelope."""
        self._refuse(400, BadRequest.code, "the request is not valid HTTP/1.1")


def hardened_http_protocol(
    service: str, *, header_read_timeout_s: float, max_header_bytes: int
) -> type[HardenedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=``, configured for one server."""
    return type(
        "HardenedHttpToolsProtocol",
        (HardenedHttpToolsProtocol,),
        {
            "service": service,
            "header_read_timeout_s": header_read_timeout_s,
            "max_header_bytes": max_header_bytes,
        },
    )


# --------------------------------------------------------------------------- log rate limiting


class RateLimitedLog(logging.Filter):
    """Lets at most ``burst`` records of one kind through per ``interval_s`` (a kind: the logger
    and the first line of the message template); drops the rest. The first record of a kind let
    through after some were dropped carries ``suppressed`` (how many) and ``suppressed_over_s``.

    A logger's filter sees the records logged on that logger (not its children's), before any
    handler: a dropped record costs one call, never a formatted line."""

    max_kinds = 256  # kinds remembered; beyond it, all the others share one budget

    def __init__(self, burst: int = LOG_BURST, interval_s: float = LOG_INTERVAL_S) -> None:
        super().__init__()
        self.burst = burst
        self.interval_s = interval_s
        self.clock: Callable[[], float] = time.monotonic
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], list[float]] = {}  # kind -> [start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, str(record.msg).split("\n", 1)[0][:120])
        now = self.clock()
        with self._lock:
            window = self._windows.get(kind)
            if window is None and len(self._windows) >= self.max_kinds:
                self._forget_stale(now)
                if len(self._windows) >= self.max_kinds:
                    kind = (record.name, "")
                    window = self._windows.get(kind)
            if window is None or now - window[0] >= self.interval_s:
                dropped = int(window[2]) if window is not None else 0
                elapsed = now - window[0] if window is not None else 0.0
                window = self._windows[kind] = [now, 0, 0]
                if dropped:
                    record.suppressed = dropped
                    record.suppressed_over_s = round(elapsed, 1)
            if window[1] >= self.burst:
                window[2] += 1
                return False
            window[1] += 1
            return True

    def _forget_stale(self, now: float) -> None:
        for kind in [k for k, w in self._windows.items() if now - w[0] >= self.interval_s and not w[2]]:
            del self._windows[kind]


_CONNECTION_LOG_LIMIT = RateLimitedLog()


def connection_log_limit() -> RateLimitedLog:
    """The one ``RateLimitedLog`` of the process, put on ``CONNECTION_LOGGERS`` (idempotent: every
    server built in a process shares it; logging setup replaces handlers, never these filters)."""
    for name in CONNECTION_LOGGERS:
        logger = logging.getLogger(name)
        if _CONNECTION_LOG_LIMIT not in logger.filters:
            logger.addFilter(_CONNECTION_LOG_LIMIT)
    return _CONNECTION_LOG_LIMIT
