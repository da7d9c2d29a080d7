"""Issue 28's descriptor exhaustion, small: ``ml-pipeline run postprocess`` in a child process with
128 file descriptors, and 400 connections that never send a byte.

Before the header-read timeout the silent connections held every descriptor for ever (``/health``
hung) and asyncio logged "socket.accept() out of system resource" thousands of times a second (its
accept loop logs once per backlog slot, CPython gh-151615). Now they are closed after
``HEADER_READ_TIMEOUT_S``, the service answers again while the client still holds them all, and
the accept errors take at most a few log lines per interval."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time

import httpx
import pytest

from ml_pipeline import server
from support.apps import free_port

pytestmark = pytest.mark.slow

FD_LIMIT = 128
SILENT_CONNECTIONS = 400


def limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def test_silent_connections_cannot_exhaust_descriptors_or_flood_the_log(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "HEADER_READ_TIMEOUT_S": "1",
        "METRICS_PORT": "0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "PREPROCESS_URL": "http://127.0.0.1:9",
        "LOG_LEVEL": "INFO",
    }
    env.pop("ML_PIPELINE_ENV_PREFIX", None)
    log_path = tmp_path / "postprocess.log"
    cmd = [sys.executable, "-m", "ml_pipeline", "run", "postprocess", "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit_descriptors)
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        for _ in range(SILENT_CONNECTIONS):  # all accepted by the kernel (backlog 2048), never a byte sent
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        start = time.monotonic()
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=20)  # every silent one still held open
        took = time.monotonic() - start
    finally:
        for sock in held:
            sock.close()
        proc.terminate()
        proc.wait(timeout=30)
    assert health.status_code == 200, health.text
    assert took < 15
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    accept_errors = [x for x in lines if x["logger"] == "asyncio" and "accept" in x["message"]]
    assert accept_errors, "the descriptor limit was never reached: the test proves nothing"
    intervals = int(took // server.LOG_INTERVAL_S) + 2
    assert len(accept_errors) <= server.LOG_BURST * intervals, len(accept_errors)
