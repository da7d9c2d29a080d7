"""SIGTERM on a model replica (what `docker compose stop` and scaling down send): it stops
accepting new connections at once, finishes the request it is serving, then exits cleanly."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ml_pipeline.core import codec, wire
from support.apps import free_port

pytestmark = pytest.mark.slow


def wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the model exited during startup"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("model not ready")


def test_sigterm_finishes_the_request_in_flight_and_refuses_new_ones(tmp_path):
    port = free_port()
    env = {**os.environ, "MODEL_BACKEND": "random", "OTEL_EXPORTER_OTLP_ENDPOINT": "", "LOG_LEVEL": "INFO"}
    log = (tmp_path / "model.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ml_pipeline", "run", "model", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(port, proc)
        body = codec.encode(np.zeros((1, 3, 224, 224), np.float32))
        head = (
            f"POST /predict HTTP/1.1\r\nHost: model\r\nContent-Type: {wire.NPY_MEDIA_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        in_flight = socket.create_connection(("127.0.0.1", port))
        in_flight.sendall(head + body[:100_000])  # a request being received when the signal comes
        time.sleep(0.3)

        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)  # no new work
        assert proc.poll() is None, "exited with a request still in flight"

        in_flight.sendall(body[100_000:])
        in_flight.settimeout(10)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += in_flight.recv(65536)
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line == b"HTTP/1.1 200 OK", answer[:300]
        in_flight.close()
        # After a clean shutdown uvicorn re-raises the signal, so the exit status says "SIGTERM"
        # (143 under Docker) — not a crash: the log shows the full shutdown below.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    output = log.read()
    assert "Application shutdown complete" in output, output[-2000:]
