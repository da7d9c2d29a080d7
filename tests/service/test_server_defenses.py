"""The services' own HTTP server defends itself (any neighbour reaches it, edge proxy or not): a real
uvicorn from ``uvicorn_config`` serving postprocess on a free port, spoken to over raw sockets.

Issue 28's repros, made small: connections that send nothing or trickle their headers are closed
after ``HEADER_READ_TIMEOUT_S``; headers over ``MAX_HEADER_BYTES`` get 431 and the connection is
closed; broken framing gets the JSON envelope, not uvicorn's text/plain; answers carry no
``server`` banner; log lines about misbehaving connections are rate-limited."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest

from ml_pipeline.cli import uvicorn_config
from support.apps import free_port, make_settings
from support.servers import connect, read_until_closed, serving, split_response

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 8192


@pytest.fixture(scope="module")
def port():
    from postprocess.app import create_app

    settings = make_settings(header_read_timeout_s=HEADER_TIMEOUT_S, max_header_bytes=MAX_HEADER_BYTES)
    port = free_port()
    with serving(uvicorn_config(create_app(settings), "127.0.0.1", port, settings)):
        yield port


def envelope_of(raw: bytes) -> tuple[int, dict[str, str], dict]:
    status, headers, body = split_response(raw)
    assert headers["content-type"] == "application/json", headers
    error = json.loads(body)["error"]
    assert error["status"] == status and error["service"] == "postprocess"
    return status, headers, error


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(port):
    with connect(port) as sock:
        received, took = read_until_closed(sock, timeout_s=HEADER_TIMEOUT_S + 5)
    assert received == b""  # nothing was asked, nothing is answered
    assert HEADER_TIMEOUT_S * 0.8 <= took <= HEADER_TIMEOUT_S + 2


def test_headers_sent_one_byte_at_a_time_are_cut_off_with_a_408(port):
    request = b"GET /health HTTP/1.1\r\nHost: postprocess\r\nX-Slow: " + b"a" * 1000
    start = time.monotonic()
    with connect(port) as sock:
        sock.settimeout(0.05)
        try:
            for byte in request:  # a byte every 20 ms: each read resets uvicorn's keep-alive timer
                sock.sendall(bytes([byte]))
                time.sleep(0.02)
                assert time.monotonic() - start < HEADER_TIMEOUT_S + 3, "still reading the trickle"
        except (BrokenPipeError, ConnectionResetError):
            pass
        received, _ = read_until_closed(sock, timeout_s=5)
    assert time.monotonic() - start <= HEADER_TIMEOUT_S + 3
    status, headers, error = envelope_of(received)
    assert (status, error["code"]) == (408, "request_timeout")
    assert headers["connection"] == "close"


def test_idle_keep_alive_between_requests_is_not_a_header_timeout(port):
    """The header clock starts at a request's first byte: a keep-alive connection idle for longer
    than the header timeout (but within the keep-alive timeout) still serves its next request."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", limits=httpx.Limits(max_connections=1)) as client:
        first = client.get("/health")
        time.sleep(HEADER_TIMEOUT_S * 1.5)
        second = client.get("/health")
    assert (first.status_code, second.status_code) == (200, 200)


def test_a_slow_request_head_on_a_keep_alive_connection_is_cut_off_too(port):
    with connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: postprocess\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first or not first.endswith(b"}"):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the second request's head, never finished
        received, took = read_until_closed(sock, timeout_s=HEADER_TIMEOUT_S + 5)
    status, _, error = envelope_of(received)
    assert (status, error["code"]) == (408, "request_timeout") and took <= HEADER_TIMEOUT_S + 2


@pytest.mark.parametrize("header_bytes", [MAX_HEADER_BYTES, 40 * 1024 * 1024], ids=["just-over", "40MB"])
def test_headers_over_the_limit_get_a_431_envelope_and_the_connection_closed(port, header_bytes):
    head = b"GET /health HTTP/1.1\r\nHost: postprocess\r\nX-Big: "
    with connect(port) as sock:
        sent = 0
        try:
            sock.sendall(head)
            chunk = b"b" * 65536
            while sent < header_bytes:  # never finished: the limit must apply before the end of the head
                sock.sendall(chunk[: header_bytes - sent])
                sent += min(len(chunk), header_bytes - sent)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server while we were still sending: what should happen
        received, _ = read_until_closed(sock, timeout_s=5)
    # Cut off long before the header's end: what was sent beyond the limit sits in the two sockets'
    # kernel buffers (a few MB on loopback), never in the server.
    assert sent < min(header_bytes, 16 * 1024 * 1024) or header_bytes == MAX_HEADER_BYTES, sent
    status, headers, error = envelope_of(received)
    assert (status, error["code"]) == (431, "headers_too_large")
    assert str(MAX_HEADER_BYTES) in error["message"] and headers["connection"] == "close"


def test_headers_under_the_limit_are_served(port):
    r = httpx.get(f"http://127.0.0.1:{port}/health", headers={"X-Fair": "c" * (MAX_HEADER_BYTES // 2)})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: postprocess\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET /health HTTP/1.1\r\nHost: postprocess\r\nBad Header: x\r\n\r\n",
        b"POST /finalize HTTP/1.1\r\nHost: postprocess\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["garbage", "two-lengths", "space-in-name", "bad-chunk-size"],
)
def test_framing_errors_get_the_json_envelope(port, request_bytes):
    with connect(port) as sock:
        sock.sendall(request_bytes)
        received, _ = read_until_closed(sock, timeout_s=5)
    status, headers, error = envelope_of(received)
    assert (status, error["code"]) == (400, "bad_request")
    assert "uvicorn" not in error["message"].lower() and headers["connection"] == "close"


def test_no_server_banner(port):
    r = httpx.get(f"http://127.0.0.1:{port}/health")
    assert r.status_code == 200 and "server" not in r.headers and "date" in r.headers
    missing = httpx.get(f"http://127.0.0.1:{port}/nothing-here")
    assert missing.status_code == 404 and "server" not in missing.headers


def test_log_lines_about_bad_connections_are_rate_limited(port, caplog, monkeypatch):
    from ml_pipeline.web import server

    limit = server.connection_log_limit()

    def later(seconds: float) -> None:  # the filter's clock moves on: a new interval
        monkeypatch.setattr(limit, "clock", lambda: time.monotonic() + seconds)

    later(server.LOG_INTERVAL_S)
    caplog.set_level(logging.INFO)
    for _ in range(40):
        with connect(port) as sock:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            read_until_closed(sock, timeout_s=5)
    lines = [r for r in caplog.records if r.name in ("ml_pipeline.server", "uvicorn.error")]
    assert 1 <= len(lines) <= server.LOG_BURST, [r.getMessage() for r in lines]
    later(2 * server.LOG_INTERVAL_S)
    caplog.clear()
    with connect(port) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        read_until_closed(sock, timeout_s=5)
    (line,) = [r for r in caplog.records if r.name == "ml_pipeline.server"]
    assert line.suppressed == 40 - len(lines)  # the first line of the new interval counts the dropped ones
