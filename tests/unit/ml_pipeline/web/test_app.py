"""``BodySizeLimitMiddleware`` on its own, around a tiny app: the limit by Content-Length and while
streaming, the exact boundary, and the draining of an unread body before the answer.

The ASGI messages are driven by hand, so each test sees what the middleware let the app read and
how much of the body had been received when the answer started."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import anyio
import pytest
from fastapi import FastAPI, Request

from ml_pipeline.web import app as service
from ml_pipeline.web.app import BodySizeLimitMiddleware
from ml_pipeline.web.envelope import install_error_handlers

pytestmark = pytest.mark.anyio

LIMIT = 1000


def tiny_app() -> FastAPI:
    """``/upload`` streams the body and records how many bytes it got; ``/ignore`` never reads it."""
    app = FastAPI()
    install_error_handlers(app, "tiny")
    app.state.read = []  # bytes each /upload call read, as it reads them

    @app.post("/upload")
    async def upload(request: Request) -> dict:
        app.state.read.append(0)
        async for chunk in request.stream():
            app.state.read[-1] += len(chunk)
        return {"bytes": app.state.read[-1]}

    @app.post("/ignore")
    async def ignore() -> dict:
        return {"ignored": True}

    return app


@dataclass
class Exchange:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    sent: int = 0  # body bytes the client had handed over when the answer started
    app_calls: int = 0

    def json(self):
        return json.loads(self.body)


async def exchange(
    app,
    chunks: list[bytes],
    *,
    path: str = "/upload",
    content_length: int | None = None,
    headers: dict[str, str] | None = None,
    stall_after: int | None = None,
) -> Exchange:
    """One request through ``BodySizeLimitMiddleware(app)``: the body arrives as ``chunks`` (with
    ``Content-Length: content_length`` if given, else chunked), then the client waits for the
    answer. ``stall_after``: the client stops sending after that many chunks, body unfinished."""
    result = Exchange()
    delivered = 0
    sent = 0

    async def spy(scope, receive, send):
        result.app_calls += 1
        await app(scope, receive, send)

    async def receive():
        nonlocal delivered, sent
        if delivered < len(chunks) and (stall_after is None or delivered < stall_after):
            chunk = chunks[delivered]
            delivered += 1
            sent += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": delivered < len(chunks)}
        await asyncio.Event().wait()  # body over (or stalled): the client waits for the answer
        raise AssertionError("unreachable: the client waits until it is cancelled")

    async def send(message):
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
            result.sent = sent
        elif message["type"] == "http.response.body":
            result.body += message.get("body", b"")

    raw_headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in (headers or {}).items()]
    if content_length is not None:
        raw_headers.append((b"content-length", str(content_length).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1234),
    }
    with anyio.fail_after(5):
        await BodySizeLimitMiddleware(spy, max_bytes=LIMIT, service="tiny")(scope, receive, send)
    return result


def pieces(total: int, size: int) -> list[bytes]:
    return [b"x" * min(size, total - start) for start in range(0, total, size)]


async def test_a_declared_length_over_the_limit_is_a_413_envelope_and_the_app_never_runs():
    """Refused from the header alone: the app (and whatever it would allocate) is not reached."""
    app = tiny_app()
    body = pieces(LIMIT + 1, 400)
    r = await exchange(app, body, content_length=LIMIT + 1)
    assert r.status == 413 and r.headers["content-type"] == "application/json"
    assert r.json()["error"] == {
        "status": 413,
        "code": "payload_too_large",
        "service": "tiny",
        "trace_id": None,
        "message": f"request body of {LIMIT + 1} bytes exceeds the limit of {LIMIT} bytes",
    }
    assert r.app_calls == 0 and app.state.read == []
    assert r.sent == LIMIT + 1  # the refused body was still read to its end before answering


async def test_a_chunked_body_is_refused_at_the_chunk_that_crosses_the_limit():
    """No Content-Length to judge by: the count runs as the body streams, and the app's read fails
    at the chunk that passes the limit (three of 400 bytes here), not after the whole body."""
    app = tiny_app()
    r = await exchange(app, pieces(10 * 400, 400))
    assert r.status == 413, r.body
    err = r.json()["error"]
    assert (err["code"], err["service"]) == ("payload_too_large", "tiny")
    assert err["message"] == f"request body of more than 1200 bytes exceeds the limit of {LIMIT} bytes"
    assert app.state.read == [800]  # the two chunks under the limit, never the one over it
    assert r.sent == 4000  # the rest drained before the answer, so a real client reads it


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_body_of_exactly_the_limit_passes_whole(declared):
    app = tiny_app()
    r = await exchange(app, pieces(LIMIT, 300), content_length=LIMIT if declared else None)
    assert r.status == 200, r.body
    assert r.json() == {"bytes": LIMIT} and app.state.read == [LIMIT]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_body_the_app_never_reads_is_drained_before_the_answer_starts(declared):
    """Answering with body bytes unread makes a closing server send RST, and the client sees a
    reset instead of the answer; so the rest is read and dropped first."""
    r = await exchange(tiny_app(), pieces(900, 300), path="/ignore", content_length=900 if declared else None)
    assert r.status == 200 and r.json() == {"ignored": True}
    assert r.sent == 900
    assert "connection" not in r.headers  # drained in full: the connection may be kept


async def test_an_expect_100_continue_body_is_not_drained():
    """That client waits for a go-ahead before sending its body: draining would wait for nothing."""
    r = await exchange(
        tiny_app(), pieces(900, 300), path="/ignore", content_length=900, headers={"expect": "100-continue"}
    )
    assert r.status == 200 and r.sent == 0


async def test_a_body_too_long_to_drain_closes_the_connection(monkeypatch):
    monkeypatch.setattr(service, "DRAIN_MAX_BYTES", 500)
    r = await exchange(tiny_app(), pieces(900, 300), path="/ignore", content_length=900)
    assert r.status == 200 and r.headers["connection"] == "close"


async def test_a_body_too_slow_to_drain_closes_the_connection(monkeypatch):
    monkeypatch.setattr(service, "DRAIN_TIMEOUT_S", 0.05)
    r = await exchange(tiny_app(), pieces(900, 300), path="/ignore", content_length=900, stall_after=1)
    assert r.status == 200 and r.headers["connection"] == "close" and r.sent == 300


# --------------------------------------------------------------------------- non-ASCII digits


@pytest.mark.parametrize("declared", [b"\xb2", b"1\xb2", b"\xb9\xb3", "\u0663".encode()], ids=["²", "1²", "¹³", "٣"])
async def test_a_content_length_of_non_ascii_digits_is_not_taken_for_a_number(declared):
    """Starlette reads header bytes as latin-1, so b"\\xb2" is "²": ``str.isdigit()`` says yes and
    ``int()`` raises (a 500). Only ASCII digits count; the body is then judged by what arrives."""
    from starlette.requests import Request as StarletteRequest

    from ml_pipeline.core.errors import PayloadTooLarge
    from ml_pipeline.web.app import read_body

    def request(body: bytes) -> StarletteRequest:
        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", declared)]}
        return StarletteRequest(scope, receive)

    assert await read_body(request(b"x" * 10), limit=10) == b"x" * 10
    with pytest.raises(PayloadTooLarge, match="request body of 11 bytes"):
        await read_body(request(b"x" * 11), limit=10)
    # The middleware's check works on the raw bytes: bytes.isdigit() is ASCII digits only already.
    assert not declared.isdigit()
    r = await exchange(tiny_app(), pieces(300, 100), headers={"content-length": declared.decode("latin-1")})
    assert r.status == 200 and r.json() == {"bytes": 300}, r.body
