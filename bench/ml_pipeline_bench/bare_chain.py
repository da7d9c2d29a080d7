"""The bare chain: the chain's shape and work with none of this project in it — the floor of a
three-service chain on the stack the services are built on (Python, uvicorn, httpx) on this machine.

Three processes, as the chain has: ``postprocess`` cuts the file out of the multipart upload and
forwards its bytes as the body (as the services do), ``preprocess`` makes the model's input with the yardstick's code
(``straightforward.image_tensor``), ``model`` runs ONNX Runtime (the services' ``ORT_INTRA_OP_THREADS``,
2 by default, no spinning) on the raw float32 bytes and answers raw logits, and postprocess answers the
top-5 as JSON. Each is a raw ASGI app on uvicorn with its C HTTP parser, one httpx client per
process — on the services' shipped event loop and transport (``EVENT_LOOP``,
``DOWNSTREAM_HTTP_TRANSPORT`` defaults) — the work done inline on the event loop: no framework, validation, limits, telemetry,
logs, metrics or thread hops. Whatever it costs above the yardstick is the price of three
processes and two hops on this stack alone, so it bounds what a per-request three-service chain on
it reaches here.

``ml-pipeline-bench run bare-chain`` starts it on free ports, drives it like any target and meters
each process's CPU from /proc.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ml_pipeline.client.aiohttp_transport import transport_for
from ml_pipeline.client.downstream import DOWNSTREAM_LIMITS
from ml_pipeline.settings import DownstreamSettings, ServiceSettings
from ml_pipeline_bench.server_cpu import Meters, ProcessCpuMeter
from ml_pipeline_bench.straightforward import image_tensor, top5

ROLES = ("postprocess", "preprocess", "model")  # the entry first
# The floor is the shipped stack's: the services' default event loop and HTTP client transport.
SHIPPED_LOOP = ServiceSettings.model_fields["event_loop"].default
SHIPPED_TRANSPORT = DownstreamSettings.model_fields["downstream_http_transport"].default
PATHS = {"postprocess": "/finalize", "preprocess": "/process", "model": "/predict"}

Asgi = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[..., Awaitable[None]]], Awaitable[None]
]


async def _body(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Callable[..., Awaitable[None]], status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def multipart_file(body: bytes, content_type: str) -> bytes:
    """The first part's content of a ``multipart/form-data`` body (the bench uploads one file)."""
    params = dict(p.strip().partition("=")[::2] for p in content_type.split(";")[1:])
    boundary = params["boundary"].strip('"').encode()
    part = body.split(b"--" + boundary)[1]
    return part.partition(b"\r\n\r\n")[2].removesuffix(b"\r\n")


def make_app(role: str, downstream: str | None = None, model_path: str | None = None, ort_threads: int = 2) -> Asgi:
    """The raw ASGI app of one role; ``downstream`` is the next hop's URL (not for ``model``)."""
    client: httpx.AsyncClient | None = None
    session: Any = None
    if role == "model":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = ort_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

    next_hop = downstream or ""

    async def work(body: bytes, content_type: str) -> tuple[bytes, bytes]:
        nonlocal client
        if role == "model":
            x = np.frombuffer(body, np.float32).reshape(1, 3, 224, 224)
            return session.run(None, {input_name: x})[0].tobytes(), b"application/octet-stream"
        client = client or _shipped_client()
        if role == "preprocess":
            tensor = image_tensor(body).tobytes()
            reply = await client.post(next_hop, content=tensor, headers={"content-type": "application/octet-stream"})
            reply.raise_for_status()
            return reply.content, b"application/octet-stream"
        image = multipart_file(body, content_type)
        reply = await client.post(next_hop, content=image, headers={"content-type": "application/octet-stream"})
        reply.raise_for_status()
        ranked = top5(np.frombuffer(reply.content, np.float32))
        return json.dumps({"top5": ranked}).encode(), b"application/json"

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":  # readiness
            await _answer(send, 200, b"ok", b"text/plain")
            return
        headers = dict(scope["headers"])
        body, content_type = await work(await _body(receive), headers.get(b"content-type", b"").decode("latin-1"))
        await _answer(send, 200, body, content_type)

    return app


def _shipped_client() -> httpx.AsyncClient:
    """One httpx client as the services' (``DOWNSTREAM_HTTP_TRANSPORT``'s default transport, their limits)."""
    transport = transport_for(SHIPPED_TRANSPORT, DOWNSTREAM_LIMITS)
    return httpx.AsyncClient(timeout=60, limits=DOWNSTREAM_LIMITS, transport=transport)


def serve(role: str, fd: int, downstream: str | None, model_path: str | None, ort_threads: int) -> None:
    import uvicorn

    app = make_app(role, downstream, model_path, ort_threads)
    config = uvicorn.Config(
        app, http="httptools", loop=SHIPPED_LOOP, lifespan="off", access_log=False, log_level="warning"
    )
    threading.Thread(target=_stop_when_parent_goes, daemon=True).start()
    # The socket as what it is (TCP): uvicorn's own `fd=` takes it for a Unix socket, and asyncio
    # then leaves Nagle's algorithm on — 40 ms stalls on every split write.
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


def _stop_when_parent_goes() -> None:
    """Stop this process when stdin (a pipe from the parent) closes: a killed benchmark leaves no
    server holding a port."""
    sys.stdin.buffer.read()
    os.kill(os.getpid(), signal.SIGTERM)


class BareChain:
    """The three processes on free 127.0.0.1 ports (listening sockets made here and handed over);
    the model with ``ort_threads`` ONNX Runtime threads (the services' default: 2)."""

    def __init__(self, model_path: str | Path, ort_threads: int = 2):
        self._model_path = str(model_path)
        self._ort_threads = ort_threads
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}

    def start(self, timeout_s: float = 120) -> str:
        """Start model, preprocess, postprocess; return the entry URL once every one answers. On any
        failure every process started so far is stopped."""
        try:
            self._spawn_all()
            deadline = time.monotonic() + timeout_s
            for role, url in self.urls.items():
                while not self._answers(url):
                    if self._processes[role].poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the bare chain's {role} did not start")
                    time.sleep(0.1)
        except BaseException:
            self.close()
            raise
        return self.urls["postprocess"]

    def _spawn_all(self) -> None:
        downstream = None
        for role in reversed(ROLES):
            with socket.create_server(("127.0.0.1", 0)) as listener:  # the child holds its own copy
                self.urls[role] = f"http://127.0.0.1:{listener.getsockname()[1]}{PATHS[role]}"
                argv = [sys.executable, "-m", "ml_pipeline_bench.bare_chain", role, str(listener.fileno())]
                argv += [downstream or "-", self._model_path, str(self._ort_threads)]
                self._processes[role] = subprocess.Popen(argv, pass_fds=[listener.fileno()], stdin=subprocess.PIPE)
            downstream = self.urls[role]

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def cpu_meter(self) -> Meters:
        """Each process's CPU (from /proc), under its role's name."""
        return Meters(*(ProcessCpuMeter(role, self._pid_of(role)) for role in ROLES))

    def _pid_of(self, role: str) -> Callable[[], list[int]]:
        return lambda: [self._processes[role].pid]

    def close(self) -> None:
        for process in self._processes.values():
            process.terminate()
            if process.stdin:
                process.stdin.close()
        for process in self._processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


if __name__ == "__main__":
    role_arg, fd_arg, downstream_arg, model_arg, threads_arg = sys.argv[1:6]
    serve(role_arg, int(fd_arg), None if downstream_arg == "-" else downstream_arg, model_arg, int(threads_arg))
