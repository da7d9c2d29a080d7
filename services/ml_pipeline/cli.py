"""``ml-pipeline``: run one service, or the whole chain as local processes.

    ml-pipeline run model --port 5002        # one service (what each container runs)
    ml-pipeline serve                        # all three on 5001/5002/5003; Ctrl-C stops them

The load generator, the study's report and the soak are tooling, not runtime: ``ml-pipeline-bench``
(bench/ml_pipeline_bench, ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

from ml_pipeline.settings import DEFAULT_PORTS, SETTINGS_BY_SERVICE, load_settings

# The benchmark's one-hop baseline runs like a service but is not part of the chain.
RUNNABLE_PORTS = {**DEFAULT_PORTS, "monolith": 5004}


def uvicorn_config(app: Any, host: str, port: int):
    """The one uvicorn configuration, used by containers, ``serve`` and the keep-alive test.

    ``app``: ``"<service>.app:create_app"`` (an app factory) or an ASGI app instance.
    """
    import uvicorn

    return uvicorn.Config(
        app,
        factory=isinstance(app, str),
        host=host,
        port=port,
        http="httptools",  # C parser (a requirement): h11 costs milliseconds per large body
        log_config=None,  # our JSON logging, set up by ``run``
        access_log=False,  # one request line comes from RequestTelemetryMiddleware, with trace ids
        # A fresh contextvars.Context per request: on the plain asyncio loop, context leaks between
        # keep-alive requests with bodies over 64 KiB (CPython gh-140947, uvicorn #2167), which
        # would make later requests join the first request's trace downstream.
        reset_contextvars=True,
        timeout_keep_alive=15,
        timeout_graceful_shutdown=20,
    )


def run(service: str, host: str, port: int) -> int:
    import uvicorn

    from ml_pipeline.telemetry import setup_logging

    os.environ.setdefault("GRPC_HOST", host)  # the model's gRPC service listens where its HTTP does
    setup_logging(service, load_settings(SETTINGS_BY_SERVICE[service]))
    uvicorn.Server(uvicorn_config(f"{service}.app:create_app", host, port)).run()
    return 0


SERVE_ORDER = ("model", "preprocess", "postprocess")  # each before the service that calls it


def serve(host: str, wait_ready_s: float, base_port: int = DEFAULT_PORTS["preprocess"]) -> int:
    """Start the three services as child processes, wired to each other on localhost: preprocess
    on ``base_port``, the model on the next port, postprocess on the one after (5001/5002/5003)."""
    ports = {service: base_port + offset for service, offset in (("preprocess", 0), ("model", 1), ("postprocess", 2))}
    children = _start_children(host, ports)
    print(f"ml-pipeline: started {', '.join(f'{s} on :{p}' for s, p in ports.items())}; Ctrl-C stops", flush=True)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    # Installed explicitly: a shell starts background jobs with SIGINT ignored, and Python then
    # never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    try:
        _wait_ready(ports["postprocess"], wait_ready_s)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        status = 1
        print("ml-pipeline: a service exited; stopping the others", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        _stop_children(children)
    return status


def _start_children(host: str, ports: dict[str, int]) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env.setdefault("MODEL_URL", f"http://127.0.0.1:{ports['model']}")
    env.setdefault("PREPROCESS_URL", f"http://127.0.0.1:{ports['preprocess']}")
    children = []
    for service in SERVE_ORDER:
        cmd = [sys.executable, "-m", "ml_pipeline", "run", service, "--host", host, "--port", str(ports[service])]
        # Own session: a terminal Ctrl-C reaches only us, and each child gets exactly one SIGINT.
        children.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    return children


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    for child in children:
        try:
            child.wait(timeout=25)
        except subprocess.TimeoutExpired:
            child.kill()


def _wait_ready(port: int, timeout_s: float) -> None:
    import httpx

    url = f"http://127.0.0.1:{port}/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                print(f"ml-pipeline: ready — curl -F file=@test.jpg http://localhost:{port}/finalize", flush=True)
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    print(f"ml-pipeline: not ready after {timeout_s:.0f} s (see the logs above)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ml-pipeline", description="Image-classification pipeline services.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run one service")
    p_run.add_argument("service", choices=list(RUNNABLE_PORTS))
    p_run.add_argument("--host", default="127.0.0.1")
    p_run.add_argument("--port", type=int, help="default: the service's host port (5001/5002/5003; monolith 5004)")
    p_serve = sub.add_parser("serve", help="run all three services as local processes")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--wait-ready", type=float, default=120, help="seconds to wait for readiness")
    p_serve.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_PORTS["preprocess"],
        help="preprocess's port; the model and postprocess take the next two (default: 5001, 5002, 5003)",
    )
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.service, args.host, args.port or RUNNABLE_PORTS[args.service])
    return serve(args.host, args.wait_ready, args.base_port)


if __name__ == "__main__":
    sys.exit(main())
