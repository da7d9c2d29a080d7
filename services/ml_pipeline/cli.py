"""``ml-pipeline``: run one service, or the whole chain as local processes.

    ml-pipeline run model --port 5002        # one service (what each container runs)
    ml-pipeline serve                        # all three on 5001/5002/5003; Ctrl-C stops them
    ml-pipeline bench -c 1,4,8 -n 200        # closed-loop load on /finalize: latency, throughput, stages
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from ml_pipeline.settings import DEFAULT_PORTS, Settings


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

    setup_logging(service, Settings())
    uvicorn.Server(uvicorn_config(f"{service}.app:create_app", host, port)).run()
    return 0


def serve(host: str, wait_ready_s: float) -> int:
    """Start the three services as child processes, wired to each other on localhost."""
    env = dict(os.environ)
    env.setdefault("MODEL_URL", f"http://127.0.0.1:{DEFAULT_PORTS['model']}")
    env.setdefault("PREPROCESS_URL", f"http://127.0.0.1:{DEFAULT_PORTS['preprocess']}")
    children = []
    for service in ("model", "preprocess", "postprocess"):
        cmd = [sys.executable, "-m", "ml_pipeline", "run", service, "--host", host, "--port", str(DEFAULT_PORTS[service])]
        # Own session: a terminal Ctrl-C reaches only us, and each child gets exactly one SIGINT.
        children.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    print(f"ml-pipeline: started {', '.join(f'{s} on :{p}' for s, p in DEFAULT_PORTS.items())}; Ctrl-C stops", flush=True)

    def stop(*_):
        raise KeyboardInterrupt

    # Installed explicitly: a shell starts background jobs with SIGINT ignored, and Python then
    # never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    try:
        _wait_ready(wait_ready_s)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        status = 1
        print("ml-pipeline: a service exited; stopping the others", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
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
    return status


def _wait_ready(timeout_s: float) -> None:
    import httpx

    url = f"http://127.0.0.1:{DEFAULT_PORTS['postprocess']}/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                print(f"ml-pipeline: ready — curl -F file=@test.jpg http://localhost:{DEFAULT_PORTS['postprocess']}/finalize", flush=True)
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    print(f"ml-pipeline: not ready after {timeout_s:.0f} s (see the logs above)", file=sys.stderr, flush=True)


def bench(args: argparse.Namespace) -> int:
    import asyncio
    import platform
    from pathlib import Path

    from ml_pipeline import __version__
    from ml_pipeline.bench import format_table, run_wrk, run_http, run_inprocess, write_results

    image = Path(args.image)
    if not image.is_file():
        print(f"ml-pipeline bench: no image at {image} (give one with --image)", file=sys.stderr)
        return 2
    try:
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        if min(concurrencies) < 1:
            raise ValueError
    except ValueError:
        print(f"ml-pipeline bench: --concurrency wants positive integers like 1,4,8, not {args.concurrency!r}", file=sys.stderr)
        return 2
    if args.overload:
        return bench_overload(args, image)
    requests = None if args.duration else args.requests
    amount = {"requests": requests, "duration_s": args.duration, "warmup": args.warmup, "progress": not args.no_progress}
    if args.url == "inprocess":
        results = asyncio.run(run_inprocess(image, concurrencies, **amount))
    elif args.tool == "wrk":
        if not args.duration or not shutil.which("wrk"):
            print("ml-pipeline bench: --tool wrk needs wrk (Debian package `wrk`) and -d SECONDS (wrk runs for a duration)",
                  file=sys.stderr)
            return 2
        results = run_wrk(args.url, image, concurrencies, duration_s=args.duration, warmup_s=2 if args.warmup else 0)
    else:
        results = asyncio.run(run_http(args.url, image, concurrencies, **amount))
    if args.label:
        for result in results:
            result.target = args.label
    summaries = [r.summary() for r in results]
    print(format_table(summaries))
    for s in summaries:
        stages = ", ".join(f"{name} {ms:.1f}" for name, ms in s["stages_mean_ms"].items())
        print(f"c={s['concurrency']} mean stage ms: {stages or '(no Server-Timing)'}")
        if s["errors"]:
            print(f"c={s['concurrency']} errors by status: {s['statuses']}", file=sys.stderr)
    if args.out:
        meta = {"label": args.label or args.url, "url": args.url, "tool": args.tool, "image": str(image), "version": __version__, "python": platform.python_version(),
                "machine": platform.platform(), "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_results(Path(args.out), results, meta)
        print(f"ml-pipeline bench: wrote {args.out}")
    return 1 if any(s["errors"] for s in summaries) else 0


def bench_overload(args: argparse.Namespace, image) -> int:
    """``--overload 1,2,3``: capacity first, then open-loop runs at those multiples of it."""
    import asyncio
    import json
    import platform
    from pathlib import Path

    from ml_pipeline import __version__
    from ml_pipeline.bench import format_overload_table, run_overload

    try:
        multiples = [float(m) for m in args.overload.split(",")]
        if min(multiples) <= 0:
            raise ValueError
    except ValueError:
        print(f"ml-pipeline bench: --overload wants positive multiples like 1,2,3, not {args.overload!r}", file=sys.stderr)
        return 2
    capacity, results = asyncio.run(
        run_overload(args.url, image, multiples, duration_s=args.duration or 30, good_within_s=args.good_within)
    )
    summaries = [r.summary() for r in results]
    for s in summaries:
        s["target"] = args.label or args.url
    print(f"capacity (best closed loop of 8 or 16 clients): {capacity:.1f} req/s")
    print(format_overload_table(summaries))
    if args.out:
        meta = {"label": args.label or args.url, "url": args.url, "mode": "overload", "capacity_rps": capacity,
                "image": str(image), "version": __version__, "python": platform.python_version(),
                "machine": platform.platform(), "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "overload": summaries}, indent=1))
        print(f"ml-pipeline bench: wrote {args.out}")
    return 0


def soak(args: argparse.Namespace) -> int:
    """Steady load for ``--minutes``: process memory, descriptors and p99 must stay flat."""
    import asyncio
    import json
    import platform
    from pathlib import Path

    from ml_pipeline import soak as soak_run

    image = Path(args.image)
    if not image.is_file():
        print(f"ml-pipeline soak: no image at {image} (give one with --image)", file=sys.stderr)
        return 2
    duration = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(120.0, duration / 3)
    result = asyncio.run(soak_run.run_soak(
        args.url, image, prometheus_url=args.prometheus, duration_s=duration, warmup_s=warmup, load_x=args.load,
        window_s=min(60.0, duration / 3), shared_dir=Path(args.shared_dir) if args.shared_dir else None))
    summary = result.summary()
    meta = {"command": "ml-pipeline " + " ".join(args.argv),
            "stack": args.stack, "python": platform.python_version(), "machine": platform.platform(),
            "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%d %H:%M %Z")}
    report = {"meta": meta, "summary": summary, "samples": result.samples}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"ml-pipeline soak: wrote {args.out}")
    if args.report:
        soak_run.write_report(report, Path(args.report))
        print(f"ml-pipeline soak: wrote {args.report}")
    print("soak passed" if summary["passed"] else "soak failed: " + "; ".join(summary["failures"]))
    return 0 if summary["passed"] else 1


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
    p_bench = sub.add_parser("bench", help="closed-loop load on a route: latency, throughput, per-stage breakdown")
    p_bench.add_argument("url", nargs="?", default=f"http://localhost:{DEFAULT_PORTS['postprocess']}/finalize",
                         help="route taking a multipart `file` upload (default: /finalize on localhost), "
                         "or `inprocess`: the same pipeline called directly, no HTTP (settings from the environment)")
    p_bench.add_argument("--image", default="test.jpg", help="the image every request uploads")
    p_bench.add_argument("-c", "--concurrency", default="1,2,4,8", help="comma-separated worker counts, one run each")
    amount = p_bench.add_mutually_exclusive_group()
    amount.add_argument("-n", "--requests", type=int, default=200, help="recorded requests per run")
    amount.add_argument("-d", "--duration", type=float, help="seconds per run instead of a request count")
    p_bench.add_argument("--warmup", type=int, default=20, help="unrecorded requests before each run")
    p_bench.add_argument("--out", help="write the results (summaries and raw latencies) to this JSON file")
    p_bench.add_argument("--label", help="name of this scenario in the output (default: the URL)")
    p_bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_bench.add_argument("--tool", choices=["builtin", "wrk"], default="builtin",
                         help="`wrk`: drive the same load with wrk instead, to compare (needs -d; no stage breakdown)")
    p_bench.add_argument("--overload", metavar="MULTIPLES",
                         help="open loop instead: measure capacity, then send at these multiples of it "
                         "(e.g. 1,1.5,2,3) for -d seconds each (default 30); reports goodput")
    p_bench.add_argument("--good-within", type=float, default=2.0,
                         help="with --overload: a 200 within this many seconds counts as goodput")
    p_soak = sub.add_parser("soak", help="steady open-loop load for minutes: memory, descriptors and p99 must stay flat")
    p_soak.add_argument("url", nargs="?", default=f"http://localhost:{DEFAULT_PORTS['postprocess']}/finalize")
    p_soak.add_argument("--prometheus", default="http://localhost:9090", help="the stack's Prometheus (process metrics)")
    p_soak.add_argument("--minutes", type=float, default=30)
    p_soak.add_argument("--warmup", type=float, help="seconds not judged (default: a third of the run, at most 120)")
    p_soak.add_argument("--load", type=float, default=0.5, help="the rate as a multiple of the measured capacity")
    p_soak.add_argument("--image", default="test.jpg", help="the image every request uploads")
    p_soak.add_argument("--shared-dir", help="the hand-off volume's mount: must be empty after the run")
    p_soak.add_argument("--stack", default="as shipped", help="how the stack was started (for the report)")
    p_soak.add_argument("--out", help="write the results (summary and every sample) to this JSON file")
    p_soak.add_argument("--report", help="write the Markdown report here, the plot to perf/soak.png beside it")
    p_report = sub.add_parser("bench-report", help="the Markdown report (tables, targets, plots) of bench JSON results")
    p_report.add_argument("results", help="directory of `ml-pipeline bench --out` JSON files")
    p_report.add_argument("--out", default="docs/performance.md", help="the report; plots go to perf/ beside it")
    p_report.add_argument("--notes", help="a Markdown file appended as the report's conclusions")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.command == "bench-report":
        from ml_pipeline import bench_report

        return bench_report.main([args.results, "--out", args.out] + (["--notes", args.notes] if args.notes else []))
    if args.command == "run":
        return run(args.service, args.host, args.port or RUNNABLE_PORTS[args.service])
    if args.command == "bench":
        return bench(args)
    if args.command == "soak":
        return soak(args)
    return serve(args.host, args.wait_ready)


if __name__ == "__main__":
    sys.exit(main())
