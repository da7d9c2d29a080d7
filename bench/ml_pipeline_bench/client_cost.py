"""``ml-pipeline-bench client-cost``: what one call on an internal hop costs the *calling* process,
per HTTP client, measured in one run.

The chain's two hops as the services make them — postprocess posts the uploaded image's bytes
as the body, preprocess posts the 1×3×224×224 float32 tensor (602 KB) — against one bare server (raw ASGI
on uvicorn, its own process, answering 4 KB like the model's logits), from three clients in this
process:

- ``httpx``: httpx with its own transport (httpcore), as the services shipped it first;
- ``httpx+aiohttp``: httpx's API over ``ml_pipeline.client.aiohttp_transport`` (``DOWNSTREAM_HTTP_TRANSPORT=aiohttp``);
- ``aiohttp``: aiohttp's own client, no httpx — the reference for what is possible.

No tracing on any of them (the httpx instrumentation wraps either httpx variant alike); on uvloop,
the services' event loop. The clients
take turns in rounds, the order rotating every round; each round sends ``requests`` calls at
``concurrency`` and reads this process's CPU time (``time.process_time``) around them, so the
cost is the client's alone: the server's CPU is read from /proc beside it and should not move
with the client. Reported: the median per client and hop over the rounds.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from ml_pipeline.client.aiohttp_transport import AiohttpTransport
from ml_pipeline_bench.load import markdown_table
from ml_pipeline_bench.server_cpu import process_cpu_seconds

CLIENTS = ("httpx", "httpx+aiohttp", "aiohttp")
TENSOR_BYTES = 3 * 224 * 224 * 4
ANSWER_BYTES = 4000

SERVER = f"""
import uvicorn

ANSWER = b"x" * {ANSWER_BYTES}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"), (b"content-length", b"{ANSWER_BYTES}")]}})
    await send({{"type": "http.response.body", "body": ANSWER}})

uvicorn.run(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), log_level="warning", access_log=False)
"""

Post = Callable[[str, bytes, str], Awaitable[int]]


def _shipped_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # no uvloop build for this platform: the services run asyncio's own too
        return None
    return uvloop.new_event_loop


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_listening(port: int, timeout_s: float) -> None:
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.1)


async def _clients(limits: httpx.Limits) -> tuple[dict[str, Post], Callable[[], Awaitable[None]]]:
    """Each client's ``post(url, body, content_type) → status`` (the answer read whole), and how to close them all."""
    plain = httpx.AsyncClient(limits=limits, timeout=30)
    over_aiohttp = httpx.AsyncClient(transport=AiohttpTransport(limits), timeout=30)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limits.max_connections or 0), timeout=aiohttp.ClientTimeout(total=30)
    )

    def via_httpx(client: httpx.AsyncClient) -> Post:
        async def post(url: str, body: bytes, content_type: str) -> int:
            response = await client.post(url, content=body, headers={"Content-Type": content_type})
            return response.status_code

        return post

    async def via_aiohttp(url: str, body: bytes, content_type: str) -> int:
        async with session.post(url, data=body, headers={"Content-Type": content_type}) as response:
            await response.read()
            return response.status

    async def close() -> None:
        await plain.aclose()
        await over_aiohttp.aclose()
        await session.close()

    return {"httpx": via_httpx(plain), "httpx+aiohttp": via_httpx(over_aiohttp), "aiohttp": via_aiohttp}, close


async def _round(post: Post, url: str, body: bytes, content_type: str, requests: int, concurrency: int) -> None:
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status = await post(url, body, content_type)
            if status != 200:
                raise RuntimeError(f"the bare server answered {status}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def measure(image: Path, *, rounds: int = 7, requests: int = 300, concurrency: int = 2, log=print) -> dict[str, Any]:
    """``{"hops": {hop: {client: {"client_cpu_ms": median, "server_cpu_ms": median, "rounds": [...]}}}, …}``."""
    hops = {
        "postprocess → preprocess (the image)": (image.read_bytes(), "application/octet-stream"),
        "preprocess → model (tensor)": (os.urandom(TENSOR_BYTES), "application/octet-stream"),
    }
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        _wait_until_listening(port, 30)
        # The services' event loop: uvloop where it installs (EVENT_LOOP=auto), as here.
        with asyncio.Runner(loop_factory=_shipped_loop_factory()) as runner:
            samples = runner.run(
                _calls(f"http://127.0.0.1:{port}/hop", server.pid, hops, rounds, requests, concurrency, log)
            )
    finally:
        server.terminate()
        server.wait(10)
    return {
        "rounds": rounds,
        "requests": requests,
        "concurrency": concurrency,
        "hops": {
            hop: {
                name: {
                    "client_cpu_ms": statistics.median(c for c, _ in runs),
                    "server_cpu_ms": statistics.median(s for _, s in runs),
                    "rounds": [c for c, _ in runs],
                }
                for name, runs in by_client.items()
            }
            for hop, by_client in samples.items()
        },
    }


async def _calls(
    url: str,
    server_pid: int,
    hops: dict[str, tuple[bytes, str]],
    rounds: int,
    requests: int,
    concurrency: int,
    log: Callable[[str], object],
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """``{hop: {client: [(caller CPU ms, server CPU ms) per call, one per round]}}``."""
    posts, close = await _clients(httpx.Limits(max_connections=64, max_keepalive_connections=16))
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {hop: {c: [] for c in CLIENTS} for hop in hops}
    try:
        for hop, (body, content_type) in hops.items():
            for name in CLIENTS:  # warm every connection pool and code path
                await _round(posts[name], url, body, content_type, 50, concurrency)
            for r in range(rounds):
                for name in CLIENTS[r % len(CLIENTS) :] + CLIENTS[: r % len(CLIENTS)]:
                    server_before, client_before = process_cpu_seconds(server_pid), time.process_time()
                    await _round(posts[name], url, body, content_type, requests, concurrency)
                    client_ms = 1000 * (time.process_time() - client_before) / requests
                    server_ms = 1000 * (process_cpu_seconds(server_pid) - server_before) / requests
                    samples[hop][name].append((client_ms, server_ms))
            log(
                f"client-cost: {hop}: "
                + ", ".join(f"{n} {statistics.median(c for c, _ in samples[hop][n]):.3f} ms" for n in CLIENTS)
            )
    finally:
        await close()
    return samples


def markdown(result: dict[str, Any]) -> str:
    """The report's table: the calling process's CPU ms per call, each client ÷ httpx."""
    rows = []
    for hop, by_client in result["hops"].items():
        base = by_client["httpx"]["client_cpu_ms"]
        for name in CLIENTS:
            cell = by_client[name]
            low, high = min(cell["rounds"]), max(cell["rounds"])
            rows.append(
                [
                    hop,
                    name,
                    f"{cell['client_cpu_ms']:.3f}",
                    f"{low:.3f}–{high:.3f}",
                    f"{cell['client_cpu_ms'] / base:.2f}",
                    f"{cell['server_cpu_ms']:.3f}",
                ]
            )
    header = ["hop", "client", "caller CPU ms/call (median)", "range over rounds", "× httpx", "server CPU ms/call"]
    note = (
        f"{result['rounds']} rounds of {result['requests']} calls at concurrency {result['concurrency']}, "
        "the clients' order rotating every round."
    )
    return "\n".join([*markdown_table(header, "llrlrr", rows), "", note])
