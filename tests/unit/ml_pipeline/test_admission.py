"""Admission control, deadlines and over-limit bodies: unit tests on a tiny app built with the
services' own skeleton, and real uvicorn servers for what only a socket shows."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import anyio
import httpx
import pytest
from fastapi import FastAPI, Request, UploadFile

from ml_pipeline import deadline, metrics, wire
from ml_pipeline.cli import uvicorn_config
from ml_pipeline.service import build_app
from ml_pipeline.telemetry import create_tracer_provider
from support.apps import free_port, make_settings
from support.servers import serving

pytestmark = pytest.mark.anyio


def slow_app(
    service: str = "adm", *, hold: asyncio.Event | None = None, max_body: int = 1_000_000, **overrides
) -> FastAPI:
    """An app on the services' skeleton whose ``/work`` waits for ``hold`` (or answers at once)
    and reports the deadline it saw; ``/upload`` reads a body."""
    settings = make_settings(**overrides)

    @contextlib.asynccontextmanager
    async def resources(_):
        yield

    async def ready(_):
        return True, "ok"

    app = build_app(
        service,
        settings,
        description="test",
        tracer_provider=create_tracer_provider(service, settings),
        resources=resources,
        ready=ready,
        max_body_bytes=max_body,
    )
    app.state.started = 0

    @app.post("/work")
    async def work() -> dict:
        app.state.started += 1
        if hold is not None:
            await hold.wait()
        return {"remaining_s": deadline.remaining()}

    @app.post("/upload")
    async def upload(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    @app.post("/file")
    async def file(upload: UploadFile) -> dict:
        return {"bytes": len(await upload.read())}

    return app


async def started(app: FastAPI, n: int = 1) -> None:
    """Wait until ``n`` requests have started their work (no fixed sleeps: CI may be busy)."""
    with anyio.fail_after(20):
        while app.state.started < n:
            await anyio.sleep(0.01)


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://adm.test", timeout=10)


def refused(service: str, reason: str) -> float:
    return metrics.REFUSED.labels(service, reason)._value.get()


async def test_excess_requests_are_refused_at_once_with_retry_after():
    hold = asyncio.Event()
    app = slow_app("adm-full", hold=hold, max_in_flight=2, max_queue=2, queue_timeout_s=5)
    before = refused("adm-full", "queue_full")
    async with client(app) as c:
        admitted = [asyncio.create_task(c.post("/work")) for _ in range(4)]  # 2 in flight + 2 queued
        await asyncio.sleep(0.1)
        start = time.perf_counter()
        extra = await c.post("/work")
        took = time.perf_counter() - start
        probe = await c.get("/health")
        hold.set()
        answers = await asyncio.gather(*admitted)
    assert extra.status_code == 503 and took < 0.05, (extra.text, took)
    err = extra.json()["error"]
    assert err["code"] == "overloaded" and err["retry_after_s"] == 1.0 and extra.headers["retry-after"] == "1"
    assert [a.status_code for a in answers] == [200] * 4 and app.state.started == 4
    assert probe.status_code == 200  # probes never wait or get refused
    assert refused("adm-full", "queue_full") == before + 1
    # Answered before routing, still counted under its route (not as "unmatched").
    assert metrics.REQUESTS.labels("adm-full", "/work", "POST", "503")._value.get() == 1


async def test_a_request_queued_too_long_is_refused_and_never_worked_on():
    hold = asyncio.Event()
    app = slow_app("adm-qt", hold=hold, max_in_flight=1, max_queue=4, queue_timeout_s=0.2)
    async with client(app) as c:
        first = asyncio.create_task(c.post("/work"))
        await started(app)
        start = time.perf_counter()
        queued = await c.post("/work")
        waited = time.perf_counter() - start
        hold.set()
        assert (await first).status_code == 200
        after = await c.post("/work")  # the slot came back
    assert queued.status_code == 503 and queued.json()["error"]["code"] == "overloaded"
    assert 0.2 <= waited < 1.0
    assert after.status_code == 200 and app.state.started == 2


async def test_queue_is_first_come_first_served():
    hold = asyncio.Event()
    app = slow_app("adm-fifo", hold=hold, max_in_flight=1, max_queue=5, queue_timeout_s=5)
    order = []

    async def send(i):
        r = await c.post("/work")
        order.append(i)
        return r

    async with client(app) as c:
        tasks = []
        for i in range(4):
            tasks.append(asyncio.create_task(send(i)))
            await asyncio.sleep(0.02)
        hold.set()
        await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


async def test_the_deadline_is_the_callers_if_shorter_and_is_passed_on():
    app = slow_app("adm-dl", request_timeout_s=10)
    async with client(app) as c:
        default = (await c.post("/work")).json()["remaining_s"]
        asked = (await c.post("/work", headers={wire.REQUEST_TIMEOUT_HEADER: "1500"})).json()["remaining_s"]
        longer = (await c.post("/work", headers={wire.REQUEST_TIMEOUT_HEADER: "60000"})).json()["remaining_s"]
        bad = await c.post("/work", headers={wire.REQUEST_TIMEOUT_HEADER: "soon"})
        negative = await c.post("/work", headers={wire.REQUEST_TIMEOUT_HEADER: "-5"})
    assert 9 < default <= 10 and 1 < asked <= 1.5 and 9 < longer <= 10  # a caller can shorten, never lengthen
    assert bad.status_code == 400 and negative.status_code == 400
    assert wire.REQUEST_TIMEOUT_HEADER in bad.json()["error"]["message"]


async def test_a_deadline_that_passes_in_the_queue_is_a_504_not_work():
    hold = asyncio.Event()
    app = slow_app("adm-dlq", hold=hold, max_in_flight=1, max_queue=4, queue_timeout_s=5)
    async with client(app) as c:
        first = asyncio.create_task(c.post("/work"))
        await started(app)
        late = await c.post("/work", headers={wire.REQUEST_TIMEOUT_HEADER: "100"})
        hold.set()
        await first
    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
    assert app.state.started == 1


def test_deadline_check_and_header_value():
    assert deadline.remaining() is None
    deadline.check("anything")  # no deadline outside a request: nothing to check
    token = deadline.start(0.5)
    try:
        assert 400 <= int(deadline.header_value(deadline.remaining())) <= 500
        assert deadline.parse_timeout_header(deadline.header_value(0.25)) == 0.25  # what one hop sends, the next reads
        assert deadline.header_value(0.0001) == "1"  # never 0, which the next hop would refuse
        deadline.check("early work")
    finally:
        deadline.reset(token)
    token = deadline.start(-0.01)
    try:
        with pytest.raises(Exception) as err:
            deadline.check("late work")
        assert err.value.status == 504 and "late work" in err.value.message
    finally:
        deadline.reset(token)


# --------------------------------------------------------------------------- real servers


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


async def test_uploads_up_to_the_body_limit_stay_in_memory(monkeypatch, tmp_path):
    """A 3 MB upload (over starlette's 1 MiB spool) never touches /tmp: with no usable temporary
    directory it is still read whole (a full /tmp used to make large uploads 400s)."""
    import tempfile

    from starlette.formparsers import MultiPartParser

    monkeypatch.setattr(MultiPartParser, "spool_max_size", 1024 * 1024)  # starlette's, whatever ran before
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    app = slow_app("adm-memory", max_body=4_000_000)
    async with client(app) as c:
        r = await c.post("/file", files={"upload": ("a.bin", b"z" * 3_000_000)})
    assert r.status_code == 200, r.text
    assert r.json() == {"bytes": 3_000_000}


async def test_the_body_budget_always_admits_one_body_of_the_largest_size():
    app = slow_app("adm-small-budget", max_body=5000, max_buffered_body_bytes=10)
    async with client(app) as c:
        r = await c.post("/upload", content=b"z" * 5000)
    assert r.status_code == 200 and r.json() == {"bytes": 5000}
