"""``ml-pipeline``: run one service, or the whole chain as local processes.

    ml-pipeline run model --port 5002        # one service (what each container runs)
    ml-pipeline serve                        # all three on 5001/5002/5003; Ctrl-C stops them

Each process serves its Prometheus metrics on an internal port of its own (``METRICS_PORT``, 9464;
``serve``: 9464/9465/9466), never on the port it answers requests on.

The load generator, the study's report and the soak are tooling, not runtime: ``ml-pipeline-bench``
(bench/ml_pipeline_bench, ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from ml_pipeline.settings import (
    DEFAULT_METRICS_PORT,
    DEFAULT_PORTS,
    ENV_PREFIX_VARIABLE,
    SETTINGS_BY_SERVICE,
    ServiceSettings,
    load_settings,
)

# The benchmark's one-hop baseline runs like a service but is not part of the chain.
RUNNABLE_PORTS = {**DEFAULT_PORTS, "monolith": 5004}


def uvicorn_config(app: Any, host: str, port: int, settings: ServiceSettings | None = None):
    """The one uvicorn configuration, used by containers, ``serve`` and the tests' real servers.

    ``app``: ``"<service>.app:create_app"`` (an app factory) or an ASGI app instance. ``settings``:
    the header timeout and size limit; by default an app instance's own, else the environment's.
    """
    import uvicorn

    from ml_pipeline.web.server import connection_log_limit, hardened_http_protocol

    if isinstance(app, str):
        service = app.split(".", 1)[0]
    else:
        service = getattr(getattr(app, "state", None), "service", "")
        settings = settings or getattr(getattr(app, "state", None), "settings", None)
    settings = settings or load_settings(ServiceSettings)
    connection_log_limit()  # a flood of bad connections takes a few log lines per interval
    return uvicorn.Config(
        app,
        factory=isinstance(app, str),
        host=host,
        port=port,
        # httptools, the C parser (a requirement: h11 costs milliseconds per large body), with a
        # header-read timeout, a header size limit and the JSON envelope for what it refuses.
        http=hardened_http_protocol(
            service,
            header_read_timeout_s=settings.header_read_timeout_s,
            max_header_bytes=settings.max_header_bytes,
        ),
        loop=settings.event_loop,
        server_header=False,  # no `server: uvicorn` (the `date` header stays)
        log_config=None,  # our JSON logging, set up by ``run``
        access_log=False,  # one request line comes from RequestTelemetryMiddleware, with trace ids
        # A fresh contextvars.Context per request: on the plain asyncio loop (EVENT_LOOP=asyncio, or
        # where uvloop does not install) context leaks between keep-alive requests with bodies over
        # 64 KiB (CPython gh-140947, uvicorn #2167), so later requests would join the first one's
        # trace downstream. uvloop does not leak (tests/service/test_keepalive_traces.py runs both).
        reset_contextvars=True,
        timeout_keep_alive=15,
        timeout_graceful_shutdown=20,
    )


def run(service: str, host: str, port: int) -> int:
    import uvicorn

    from ml_pipeline.observability.logs import setup_logging

    os.environ.setdefault("GRPC_HOST", host)  # the model's gRPC service listens where its HTTP does
    settings = load_settings(SETTINGS_BY_SERVICE[service])
    if settings.http_server == "granian":
        return run_granian(service, host, port, settings)
    setup_logging(service, settings)
    start_metrics_server(host, settings.metrics_port)
    uvicorn.Server(uvicorn_config(f"{service}.app:create_app", host, port)).run()
    return 0


GRANIAN_WORKER = "ML_PIPELINE_GRANIAN_WORKER"  # "<service> <metrics host>", for the worker's factory


def run_granian(service: str, host: str, port: int, settings: ServiceSettings) -> int:
    """``HTTP_SERVER=granian``, for A/B comparisons: the same app under granian (HTTP/1.1 only, the
    same event loop, one worker). granian runs the app in a forked worker process, so the worker
    builds it and serves the metrics (``granian_app``): the process whose CPU they report is the one
    doing the work. None of ``web.server``'s defenses apply."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings

    os.environ[GRANIAN_WORKER] = f"{service} {host}"
    Granian(
        "ml_pipeline.cli:granian_app",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        factory=True,
        workers=1,
        loop=Loops.asyncio if settings.event_loop == "asyncio" else Loops.uvloop,
        http=HTTPModes.http1,
        websockets=False,
        log_access=False,
        # granian's own lines through the root logger, i.e. our JSON lines
        log_dictconfig={
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {name: {"handlers": [], "propagate": True} for name in ("_granian", "granian.access")},
        },
        http1_settings=HTTP1Settings(header_read_timeout=int(settings.header_read_timeout_s * 1000)),
        workers_kill_timeout=20,  # uvicorn's timeout_graceful_shutdown; granian waits forever without it
    ).serve()
    return 0


def granian_app() -> Any:
    """The app factory granian's worker calls: logging, metrics and the app, all in the worker."""
    import importlib

    from ml_pipeline.observability.logs import setup_logging

    service, host = os.environ[GRANIAN_WORKER].split()
    settings = load_settings(SETTINGS_BY_SERVICE[service])
    setup_logging(service, settings)
    start_metrics_server(host, settings.metrics_port)
    return importlib.import_module(f"{service}.app").create_app()


def start_metrics_server(host: str, port: int) -> None:
    """The process's metrics on ``host``:``port`` (0: none), served from a daemon thread before
    uvicorn starts: Prometheus scrapes them there, apart from the port the service answers on."""
    if not port:
        return
    from ml_pipeline.observability.metrics import serve_metrics

    try:
        serve_metrics(host, port)
    except OSError as error:
        raise SystemExit(
            f"ml-pipeline: cannot serve metrics on {host}:{port} ({error}); METRICS_PORT=0 turns them off"
        ) from error
    logging.getLogger("ml_pipeline.metrics").info("metrics on http://%s:%d/metrics", host, port)


SERVE_ORDER = ("model", "preprocess", "postprocess")  # each before the service that calls it
PORT_OFFSETS = {"preprocess": 0, "model": 1, "postprocess": 2}  # from serve's base ports


def serve(
    host: str,
    wait_ready_s: float,
    base_port: int = DEFAULT_PORTS["preprocess"],
    metrics_base_port: int = DEFAULT_METRICS_PORT,
) -> int:
    """Start the three services as child processes, wired to each other on localhost: preprocess
    on ``base_port``, the model on the next port, postprocess on the one after (5001/5002/5003);
    their metrics likewise from ``metrics_base_port`` (9464/9465/9466; 0: none)."""
    ports = {service: base_port + offset for service, offset in PORT_OFFSETS.items()}
    metrics_ports = {s: metrics_base_port + offset if metrics_base_port else 0 for s, offset in PORT_OFFSETS.items()}
    children = _start_children(host, ports, metrics_ports)
    started = ", ".join(
        f"{s} on :{p}" + (f" (metrics :{metrics_ports[s]})" if metrics_ports[s] else "") for s, p in ports.items()
    )
    print(f"ml-pipeline: started {started}; Ctrl-C stops", flush=True)

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


def _start_children(host: str, ports: dict[str, int], metrics_ports: dict[str, int]) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env.setdefault("MODEL_URL", f"http://127.0.0.1:{ports['model']}")
    env.setdefault("PREPROCESS_URL", f"http://127.0.0.1:{ports['preprocess']}")
    metrics_port_variable = env.get(ENV_PREFIX_VARIABLE, "") + "METRICS_PORT"  # as load_settings reads it
    children = []
    for service in SERVE_ORDER:
        cmd = [sys.executable, "-m", "ml_pipeline", "run", service, "--host", host, "--port", str(ports[service])]
        child_env = {**env, metrics_port_variable: str(metrics_ports[service])}  # one environment, three ports
        # Own session: a terminal Ctrl-C reaches only us, and each child gets exactly one SIGINT.
        children.append(subprocess.Popen(cmd, env=child_env, start_new_session=True))
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
    p_serve.add_argument(
        "--metrics-base-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help="preprocess's metrics port; the model and postprocess take the next two "
        "(default: 9464, 9465, 9466); 0: no metrics servers",
    )
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.service, args.host, args.port or RUNNABLE_PORTS[args.service])
    return serve(args.host, args.wait_ready, args.base_port, args.metrics_base_port)


if __name__ == "__main__":
    sys.exit(main())
