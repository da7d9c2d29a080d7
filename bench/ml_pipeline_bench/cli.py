"""``ml-pipeline-bench``: the performance study's tools, outside the services (not in their images).

    ml-pipeline-bench run -c 1,4,8 -n 200      # closed-loop load on /finalize: latency, throughput, stages
    ml-pipeline-bench run --overload 1,2,3     # open loop at multiples of the measured capacity: goodput
    ml-pipeline-bench soak --minutes 30        # steady load: memory, descriptors and p99 must stay flat
    ml-pipeline-bench report reports/study     # the study's Markdown report and plots
    ml-pipeline-bench ab-report EVENT_LOOP asyncio uvloop reports/ab   # an interleaved A/B (bench/ab.sh)
    ml-pipeline-bench client-cost --out reports/client-cost.md   # a hop's CPU in the caller, per HTTP client
    ml-pipeline-bench dashboard --prometheus http://prometheus:9090 --out docs/images/dashboard.png
    ml-pipeline-bench trace --jaeger http://jaeger:16686 --request http://postprocess:5000/finalize

Installed with the package's ``bench`` extra: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ml_pipeline import __version__
from ml_pipeline.settings import DEFAULT_PORTS
from ml_pipeline_bench import ab, report
from ml_pipeline_bench import soak as soak_run
from ml_pipeline_bench.load import (
    RunResult,
    format_overload_table,
    format_table,
    npy_body,
    run_bare_chain,
    run_http,
    run_inprocess,
    run_overload,
    run_straightforward,
    run_wrk,
    write_results,
)
from ml_pipeline_bench.server_cpu import CpuMeter, CpuSource


def _refuse(command: str, message: str) -> int:
    """A usage error: said on stderr, exit status 2 (as argparse does)."""
    print(f"ml-pipeline-bench {command}: {message}", file=sys.stderr)
    return 2


def _positive_numbers(text: str, number: type[int] | type[float]) -> list[Any] | None:
    """``"1,4,8"`` as numbers, or None when one of them is not a positive number."""
    try:
        values = [number(x) for x in text.split(",")]
    except ValueError:
        return None
    return None if min(values) <= 0 else values


def _host(time_format: str) -> dict[str, Any]:
    """Where and when a result was measured: the last keys of every result's meta."""
    return {
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "time": time.strftime(time_format),
    }


def _write_json(path: str, payload: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1))


def run(args: argparse.Namespace) -> int:
    """``run``: closed-loop runs at each concurrency (or ``--overload``), their table, and the JSON."""
    image = Path(args.image)
    if not image.is_file():
        return _refuse("run", f"no image at {image} (give one with --image)")
    concurrencies = _positive_numbers(args.concurrency, int)
    if concurrencies is None:
        return _refuse("run", f"--concurrency wants positive integers like 1,4,8, not {args.concurrency!r}")
    if args.overload:
        return overload(args, image)
    results = _closed_loop_runs(args, image, concurrencies)
    if results is None:
        return _refuse("run", "--tool wrk needs wrk (Debian package `wrk`) and -d SECONDS (wrk runs for a duration)")
    if args.label:
        for result in results:
            result.target = args.label
    summaries = [r.summary() for r in results]
    _print_summaries(summaries)
    if args.out:
        meta = {"label": args.label or args.url, "url": args.url, "tool": args.tool, "image": str(image)}
        meta |= {"version": __version__, **_host("%Y-%m-%dT%H:%M:%S%z")}
        write_results(Path(args.out), results, meta)
        print(f"ml-pipeline-bench run: wrote {args.out}")
    return 1 if any(s["errors"] for s in summaries) else 0


def _closed_loop_runs(args: argparse.Namespace, image: Path, concurrencies: list[int]) -> list[RunResult] | None:
    """The runs, in process, over HTTP or by wrk (None: wrk asked for but it cannot run)."""
    requests = None if args.duration else args.requests
    amount = {
        "requests": requests,
        "duration_s": args.duration,
        "warmup": args.warmup,
        "progress": not args.no_progress,
    }
    if args.url == "inprocess":
        return asyncio.run(run_inprocess(image, concurrencies, **amount))
    if args.url == "straightforward":
        return asyncio.run(run_straightforward(image, concurrencies, **amount))
    if args.url == "bare-chain":
        return asyncio.run(run_bare_chain(image, concurrencies, **amount))
    if args.tool == "wrk":
        if not args.duration or not shutil.which("wrk"):
            return None
        return run_wrk(args.url, image, concurrencies, duration_s=args.duration, warmup_s=2 if args.warmup else 0)
    meter = CpuMeter(args.cpu_from) if args.cpu_from else None
    body = npy_body(image) if args.body == "npy" else None
    return asyncio.run(run_http(args.url, image, concurrencies, **amount, cpu_meter=meter, body=body))


def _print_summaries(summaries: list[dict[str, Any]]) -> None:
    """The table, each run's mean stages, and (on stderr) the statuses of runs with errors."""
    print(format_table(summaries))
    for s in summaries:
        stages = ", ".join(f"{name} {ms:.1f}" for name, ms in s["stages_mean_ms"].items())
        print(f"c={s['concurrency']} mean stage ms: {stages or '(no Server-Timing)'}")
        if s["errors"]:
            print(f"c={s['concurrency']} errors by status: {s['statuses']}", file=sys.stderr)


def overload(args: argparse.Namespace, image: Path) -> int:
    """``--overload 1,2,3``: capacity first, then open-loop runs at those multiples of it."""
    multiples = _positive_numbers(args.overload, float)
    if multiples is None:
        return _refuse("run", f"--overload wants positive multiples like 1,2,3, not {args.overload!r}")
    capacity, results = asyncio.run(
        run_overload(args.url, image, multiples, duration_s=args.duration or 30, good_within_s=args.good_within)
    )
    summaries = [r.summary() for r in results]
    for s in summaries:
        s["target"] = args.label or args.url
    print(f"capacity (best closed loop of 8 or 16 clients): {capacity:.1f} req/s")
    print(format_overload_table(summaries))
    if args.out:
        meta = {"label": args.label or args.url, "url": args.url, "mode": "overload", "capacity_rps": capacity}
        meta |= {"image": str(image), "version": __version__, **_host("%Y-%m-%dT%H:%M:%S%z")}
        _write_json(args.out, {"meta": meta, "overload": summaries})
        print(f"ml-pipeline-bench run: wrote {args.out}")
    return 0


def soak(args: argparse.Namespace) -> int:
    """Steady load for ``--minutes``: process memory, descriptors and p99 must stay flat."""

    image = Path(args.image)
    if not image.is_file():
        return _refuse("soak", f"no image at {image} (give one with --image)")
    duration = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(120.0, duration / 3)
    result = asyncio.run(
        soak_run.run_soak(
            args.url,
            image,
            prometheus_url=args.prometheus,
            duration_s=duration,
            warmup_s=warmup,
            load_x=args.load,
            window_s=min(60.0, duration / 3),
            shared_dir=Path(args.shared_dir) if args.shared_dir else None,
        )
    )
    summary = result.summary()
    meta = {"command": "ml-pipeline-bench " + " ".join(args.argv), "stack": args.stack, **_host("%Y-%m-%d %H:%M %Z")}
    report = {"meta": meta, "summary": summary, "samples": result.samples}
    if args.out:
        _write_json(args.out, report)
        print(f"ml-pipeline-bench soak: wrote {args.out}")
    if args.report:
        soak_run.write_report(report, Path(args.report))
        print(f"ml-pipeline-bench soak: wrote {args.report}")
    print("soak passed" if summary["passed"] else "soak failed: " + "; ".join(summary["failures"]))
    return 0 if summary["passed"] else 1


def _add_run_parser(sub: Any) -> None:
    p_run = sub.add_parser("run", help="closed-loop load on a route: latency, throughput, per-stage breakdown")
    p_run.add_argument(
        "url",
        nargs="?",
        default=f"http://localhost:{DEFAULT_PORTS['postprocess']}/finalize",
        help="route taking a multipart `file` upload (default: /finalize on localhost), "
        "or `inprocess`: the same pipeline called directly, no HTTP (settings from the environment), "
        "or `straightforward`: the yardstick, a plain Pillow + ONNX Runtime pipeline in one process per core, "
        "or `bare-chain`: the yardstick's work in three bare uvicorn + httpx processes shaped like the chain "
        "(the floor of its stack)",
    )
    p_run.add_argument("--image", default="test.jpg", help="the image every request uploads")
    p_run.add_argument("-c", "--concurrency", default="1,2,4,8", help="comma-separated worker counts, one run each")
    amount = p_run.add_mutually_exclusive_group()
    amount.add_argument("-n", "--requests", type=int, default=200, help="recorded requests per run")
    amount.add_argument("-d", "--duration", type=float, help="seconds per run instead of a request count")
    p_run.add_argument("--warmup", type=int, default=20, help="unrecorded requests before each run")
    p_run.add_argument("--out", help="write the results (summaries and raw latencies) to this JSON file")
    p_run.add_argument("--label", help="name of this scenario in the output (default: the URL)")
    p_run.add_argument(
        "--cpu-from",
        action="append",
        type=CpuSource.parse,
        metavar="NAME=URL",
        help="a service's /metrics (process_cpu_seconds), read before and after each run: its CPU ms "
        "per request in the results; the host's every address counts (replicas); repeat per service",
    )
    p_run.add_argument(
        "--body",
        choices=["multipart", "npy"],
        default="multipart",
        help="`npy`: send the image preprocessed, as the model's .npy input (for /predict), not uploaded",
    )
    p_run.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_run.add_argument(
        "--tool",
        choices=["builtin", "wrk"],
        default="builtin",
        help="`wrk`: drive the same load with wrk instead, to compare (needs -d; no stage breakdown)",
    )
    p_run.add_argument(
        "--overload",
        metavar="MULTIPLES",
        help="open loop instead: measure capacity, then send at these multiples of it "
        "(e.g. 1,1.5,2,3) for -d seconds each (default 30); reports goodput",
    )
    p_run.add_argument(
        "--good-within",
        type=float,
        default=2.0,
        help="with --overload: a 200 within this many seconds counts as goodput",
    )


def _add_soak_parser(sub: Any) -> None:
    p_soak = sub.add_parser(
        "soak", help="steady open-loop load for minutes: memory, descriptors and p99 must stay flat"
    )
    p_soak.add_argument("url", nargs="?", default=f"http://localhost:{DEFAULT_PORTS['postprocess']}/finalize")
    p_soak.add_argument(
        "--prometheus", default="http://localhost:9090", help="the stack's Prometheus (process metrics)"
    )
    p_soak.add_argument("--minutes", type=float, default=30)
    p_soak.add_argument("--warmup", type=float, help="seconds not judged (default: a third of the run, at most 120)")
    p_soak.add_argument("--load", type=float, default=0.5, help="the rate as a multiple of the measured capacity")
    p_soak.add_argument("--image", default="test.jpg", help="the image every request uploads")
    p_soak.add_argument("--shared-dir", help="the hand-off volume's mount: must be empty after the run")
    p_soak.add_argument("--stack", default="as shipped", help="how the stack was started (for the report)")
    p_soak.add_argument("--out", help="write the results (summary and every sample) to this JSON file")
    p_soak.add_argument("--report", help="write the Markdown report here, the plot to perf/soak.png beside it")


def _add_report_parser(sub: Any) -> None:
    p_report = sub.add_parser("report", help="the Markdown report (tables, targets, plots) of bench JSON results")
    p_report.add_argument("results", help="directory of `ml-pipeline-bench run --out` JSON files")
    p_report.add_argument("--out", default="docs/performance.md", help="the report; plots go to perf/ beside it")
    p_report.add_argument("--notes", help="a Markdown file appended as the report's conclusions")


def _add_ab_report_parser(sub: Any) -> None:
    p_ab = sub.add_parser("ab-report", help="the verdict of an interleaved A/B of one setting (bash bench/ab.sh)")
    p_ab.add_argument("setting", help="the compared setting, e.g. EVENT_LOOP")
    p_ab.add_argument("a", help="value A (the baseline)")
    p_ab.add_argument("b", help="value B")
    p_ab.add_argument("results", help="directory of the runs' JSON files, <SETTING>-<pair>-<value>.json")
    p_ab.add_argument("--out", help="also write the Markdown report here")


def ab_report(args: argparse.Namespace) -> int:
    runs = ab.load_runs(Path(args.results), args.setting)
    try:
        text = ab.render(args.setting, runs, args.a, args.b)
    except ValueError as error:
        return _refuse("ab-report", str(error))
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def _add_client_cost_parser(sub: Any) -> None:
    p_cost = sub.add_parser(
        "client-cost",
        help="what one call on each internal hop costs the caller's CPU: httpx, httpx over aiohttp, aiohttp",
    )
    p_cost.add_argument("--image", default="test.jpg", help="the upload of the multipart hop")
    p_cost.add_argument("--rounds", type=int, default=7, help="rounds per client and hop, the order rotating")
    p_cost.add_argument("--requests", type=int, default=300, help="calls per round")
    p_cost.add_argument("-c", "--concurrency", type=int, default=2)
    p_cost.add_argument("--out", help="also write the Markdown table (and its JSON beside it)")


def client_cost(args: argparse.Namespace) -> int:
    from ml_pipeline_bench import client_cost as cost

    result = cost.measure(Path(args.image), rounds=args.rounds, requests=args.requests, concurrency=args.concurrency)
    text = cost.markdown(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        _write_json(str(out.with_suffix(".json")), {"meta": _host("%Y-%m-%dT%H:%M:%S%z"), **result})
    return 0


def _add_dashboard_parser(sub: Any) -> None:
    p_dash = sub.add_parser("dashboard", help="draw the Grafana dashboard's panels from the live Prometheus (a PNG)")
    p_dash.add_argument("--prometheus", default="http://localhost:9090", help="the stack's Prometheus")
    p_dash.add_argument("--dashboard", default="grafana/dashboards/ml-pipeline.json", help="the dashboard JSON")
    p_dash.add_argument("--minutes", type=float, default=10, help="how far back the panels reach")
    p_dash.add_argument("--out", default="docs/images/dashboard.png", help="the PNG to write")


def dashboard(args: argparse.Namespace) -> int:
    import httpx

    from ml_pipeline_bench import dashboard as drawing

    path = Path(args.dashboard)
    if not path.is_file():
        return _refuse("dashboard", f"no dashboard at {path} (give one with --dashboard)")
    board = json.loads(path.read_text())
    with httpx.Client(timeout=30) as client:
        drawn = drawing.render(board, args.prometheus.rstrip("/"), Path(args.out), client, args.minutes)
    panels = sum(p["type"] == "timeseries" for p in board["panels"])
    print(f"ml-pipeline-bench dashboard: wrote {args.out} ({drawn} of {panels} panels with data)")
    return 0


def _add_trace_parser(sub: Any) -> None:
    p_trace = sub.add_parser("trace", help="draw one request's trace from Jaeger (a PNG)")
    p_trace.add_argument("--jaeger", default="http://localhost:16686", help="Jaeger's query API")
    source = p_trace.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace-id", help="the trace to draw")
    source.add_argument("--request", metavar="URL", help="send one upload of --image here and draw its trace")
    p_trace.add_argument("--image", default="test.jpg", help="the upload (with --request)")
    p_trace.add_argument("--out", default="docs/images/trace.png", help="the PNG to write")


def trace(args: argparse.Namespace) -> int:
    import httpx

    from ml_pipeline_bench import trace as drawing

    trace_id = args.trace_id
    if args.request:
        image = Path(args.image)
        if not image.is_file():
            return _refuse("trace", f"no image at {image} (give one with --image)")
        answer = httpx.post(args.request, files={"file": (image.name, image.read_bytes(), "image/jpeg")}, timeout=30)
        if answer.status_code != 200:
            return _refuse("trace", f"{args.request} answered HTTP {answer.status_code}: {answer.text[:200]}")
        trace_id = answer.headers["X-Trace-Id"]
    with httpx.Client(timeout=10) as client:
        for _ in range(60):  # spans reach Jaeger in batches: until every service's are in
            try:
                found = drawing.fetch(client, args.jaeger.rstrip("/"), trace_id)
                if len({p["serviceName"] for p in found["processes"].values()}) >= 3:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            return _refuse("trace", f"trace {trace_id} never reached Jaeger at {args.jaeger} with all three services")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    spans = drawing.render(found, Path(args.out))
    print(f"ml-pipeline-bench trace: wrote {args.out} (trace {trace_id}, {spans} spans)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml-pipeline-bench", description=__doc__.splitlines()[0].strip("`: "))
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    _add_soak_parser(sub)
    _add_report_parser(sub)
    _add_ab_report_parser(sub)
    _add_client_cost_parser(sub)
    _add_dashboard_parser(sub)
    _add_trace_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.command == "report":
        return report.main([args.results, "--out", args.out] + (["--notes", args.notes] if args.notes else []))
    if args.command == "soak":
        return soak(args)
    if args.command == "ab-report":
        return ab_report(args)
    if args.command == "client-cost":
        return client_cost(args)
    if args.command == "dashboard":
        return dashboard(args)
    if args.command == "trace":
        return trace(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
