"""Admission control and over-limit bodies on real uvicorn servers (the services' own
``uvicorn_config``), for what only a socket shows: resets, trickling bodies, hung-up clients."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

import anyio
import httpx
import pytest

from ml_pipeline.cli import uvicorn_config
from support.apps import free_port
from support.servers import serving
from support.skeleton import refused, slow_app, started

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def served(app, http: str = "httptools"):
    """``app`` on a real uvicorn: the services' own protocol, or h11's for ``http="h11"``."""
    port = free_port()
    config = uvicorn_config(app, "127.0.0.1", port)
    if http != "httptools":
        config.http = http
    with serving(config):
        yield port


def raw_post(port: int, path: str, body_size: int, *, chunked: bool = False, extra: bytes = b"") -> bytes:
    """Send a whole over-limit body without `Expect: 100-continue`, as a naive client does, then
    read the answer. A server that closed with unread bytes makes this a connection reset."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        head = b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n" % path.encode() + extra
        chunk = b"x" * 65536
        if chunked:
            s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
            for _ in range(body_size // len(chunk)):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        else:
            s.sendall(head + b"Content-Length: %d\r\n\r\n" % body_size)
            for _ in range(body_size // len(chunk)):
                s.sendall(chunk)
            s.sendall(b"x" * (body_size % len(chunk)))
        answer = b""
        while b"}}" not in answer:
            data = s.recv(65536)
            if not data:
                break
            answer += data
        return answer


@pytest.mark.slow
@pytest.mark.parametrize("http", ["httptools", "h11"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("connection", [b"", b"Connection: close\r\n"], ids=["keep-alive", "close"])
async def test_an_over_limit_body_is_answered_413_not_reset(http, chunked, connection):
    """One-shot clients (urllib, many scripts) send `Connection: close`: the server then closes
    right after its answer, and unread body bytes turn that close into a reset."""
    app = slow_app("adm-413")
    with served(app, http) as port:
        answer = await anyio.to_thread.run_sync(
            lambda: raw_post(port, "/upload", 8_000_000, chunked=chunked, extra=connection)
        )
        ok = await anyio.to_thread.run_sync(lambda: httpx.post(f"http://127.0.0.1:{port}/upload", content=b"abc"))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"payload_too_large"' in answer
    assert ok.json() == {"bytes": 3}


@pytest.mark.slow
async def test_a_refusal_is_read_by_a_client_still_sending_its_body():
    hold = asyncio.Event()
    app = slow_app("adm-busy", hold=hold, max_body=20_000_000, max_in_flight=1, max_queue=0)
    with served(app) as port:
        busy = threading.Thread(target=lambda: httpx.post(f"http://127.0.0.1:{port}/work", timeout=30), daemon=True)
        busy.start()
        await started(app)
        answer = await anyio.to_thread.run_sync(
            lambda: raw_post(port, "/work", 8_000_000, extra=b"Connection: close\r\n")
        )
        hold.set()
        busy.join(10)
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b'"code":"overloaded"' in answer and b"retry-after: 1" in answer.lower()


@pytest.mark.slow
async def test_a_client_that_hangs_up_while_queued_leaves_the_queue():
    hold = asyncio.Event()
    app = slow_app("adm-gone", hold=hold, max_in_flight=1, max_queue=4, queue_timeout_s=10)
    before = refused("adm-gone", "client_gone")
    with served(app) as port:
        first = threading.Thread(target=lambda: httpx.post(f"http://127.0.0.1:{port}/work", timeout=30), daemon=True)
        first.start()
        await started(app)
        with pytest.raises(httpx.ReadTimeout):  # waits in the queue, then gives up
            await anyio.to_thread.run_sync(lambda: httpx.post(f"http://127.0.0.1:{port}/work", timeout=0.3))
        await anyio.sleep(0.3)
        hold.set()
        first.join(10)
        third = await anyio.to_thread.run_sync(lambda: httpx.post(f"http://127.0.0.1:{port}/work", timeout=10))
    assert third.status_code == 200
    assert refused("adm-gone", "client_gone") == before + 1
    assert app.state.started == 2  # the first and the third: the one that hung up never ran


def read_answer(sock: socket.socket) -> bytes:
    """An answer whose JSON body ends in ``}`` (headers and body may come in separate writes)."""
    answer = b""
    while not answer.rstrip().endswith(b"}"):
        data = sock.recv(4096)
        if not data:
            break
        answer += data
    return answer


def start_slow_upload(port: int, declared: int, sent: bytes) -> socket.socket:
    """A client that declares ``declared`` body bytes, sends ``sent`` and then nothing more."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % declared + sent)
    return s


@pytest.mark.slow
async def test_clients_trickling_their_bodies_hold_no_slot():
    """The bodies arrive before a slot is taken: three stalled uploads against one slot and no
    queue leave it free for a real request (they used to take it and lock everyone out)."""
    app = slow_app("adm-trickle", max_in_flight=1, max_queue=0, request_timeout_s=5)
    with served(app) as port:
        stalled = [start_slow_upload(port, 100, b"x") for _ in range(3)]
        try:
            await anyio.sleep(0.3)  # every stalled upload has reached the app
            real = await anyio.to_thread.run_sync(lambda: httpx.post(f"http://127.0.0.1:{port}/work", timeout=10))
            stalled[0].sendall(b"x" * 99)  # one finishes its body: it is served
            answer = await anyio.to_thread.run_sync(lambda: read_answer(stalled[0]))
        finally:
            for s in stalled:
                s.close()
    assert real.status_code == 200, real.text
    assert answer.startswith(b"HTTP/1.1 200") and b'"bytes":100' in answer, answer[:300]


@pytest.mark.slow
async def test_a_body_still_arriving_at_the_deadline_is_a_408_and_frees_its_place():
    """A client that sends part of its body and then nothing is answered 408 `request_timeout` at
    the request's deadline (one timeout over the whole body), and its bytes leave the budget."""
    app = slow_app("adm-stalled", max_in_flight=1, max_queue=0, request_timeout_s=1, max_buffered_body_bytes=150)
    with served(app) as port:
        stalled = start_slow_upload(port, 100, b"x" * 60)
        try:
            started_at = anyio.current_time()
            answer = await anyio.to_thread.run_sync(lambda: read_answer(stalled))
            took = anyio.current_time() - started_at
        finally:
            stalled.close()
        after = await anyio.to_thread.run_sync(
            lambda: httpx.post(f"http://127.0.0.1:{port}/upload", content=b"y" * 120, timeout=10)
        )
    assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer, answer[:300]
    assert 0.5 <= took <= 3, took
    assert after.status_code == 200 and after.json() == {"bytes": 120}  # 60 + 120 would be over 150


@pytest.mark.slow
async def test_bodies_being_received_share_a_byte_budget():
    """MAX_BUFFERED_BODY_BYTES bounds the bodies held at once (received, queued or worked on):
    past it a body is refused with 503 `overloaded`, counted as `body_budget`; under it, served."""
    app = slow_app(
        "adm-budget", max_body=1000, max_in_flight=4, max_queue=4, request_timeout_s=5, max_buffered_body_bytes=2000
    )
    before = refused("adm-budget", "body_budget")
    with served(app) as port:
        url = f"http://127.0.0.1:{port}/upload"
        holding = [start_slow_upload(port, 1000, b"x" * 900) for _ in range(2)]  # 1800 of 2000 bytes
        try:
            await anyio.sleep(0.3)
            over = await anyio.to_thread.run_sync(lambda: httpx.post(url, content=b"y" * 300, timeout=10))
            under = await anyio.to_thread.run_sync(lambda: httpx.post(url, content=b"y" * 150, timeout=10))
        finally:
            for s in holding:
                s.close()
    assert over.status_code == 503 and over.json()["error"]["code"] == "overloaded", over.text
    assert "request bodies" in over.json()["error"]["message"]
    assert refused("adm-budget", "body_budget") == before + 1
    assert under.status_code == 200 and under.json() == {"bytes": 150}
