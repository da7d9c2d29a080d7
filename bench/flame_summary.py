"""A py-spy flame graph (SVG) as text: where one process's CPU samples went.

    python3 bench/flame_summary.py docs/perf/flame-before-model.svg [--cpu-ms MS]

Prints the share of samples spent in each layer (self time, by the file a frame runs in: the
OpenTelemetry SDK, prometheus_client, logging and json, FastAPI/Starlette, uvicorn and asyncio,
httpx, the work itself — ONNX Runtime, NumPy, Pillow — our own code, …), then the functions with
the most self time and the most inclusive time. Standard library only: bench/profile.sh runs it
on the host.
"""

from __future__ import annotations

import argparse
import collections
import html
import itertools
import re
import sys
from dataclasses import dataclass, field

FRAME = re.compile(
    r'<title>(?P<title>[^<]*)</title><rect [^>]*?y="(?P<y>[\d.]+)"[^>]*?fg:x="(?P<x>\d+)" fg:w="(?P<w>\d+)"'
)
TITLE = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\) \(\d[\d,]* samples?, [\d.]+%\)$")

# A sample counts for the innermost frame on its stack that is not the standard library's (logging
# and json excepted: they are the request log line) nor anyio's, so asyncio's socket write under
# httpcore counts for the downstream client and json under logging for the log line. The first pattern found in
# that frame's file (py-spy --full-filenames) decides its layer.
CLIENT = "httpx + httpcore / aiohttp (the downstream client)"
LAYERS = [
    ("/opentelemetry/", "OpenTelemetry (spans, instrumentation, OTLP export)"),
    ("/google/protobuf/", "OpenTelemetry (spans, instrumentation, OTLP export)"),
    ("/prometheus_client/", "prometheus_client (request and stage metrics)"),
    ("/logging/", "logging + json (the request log line)"),
    ("/json/", "logging + json (the request log line)"),
    ("/python_multipart/", "python-multipart (+ Starlette's form parser)"),
    ("/starlette/formparsers", "python-multipart (+ Starlette's form parser)"),
    ("/pydantic", "pydantic"),
    ("/fastapi/", "FastAPI + Starlette"),
    ("/starlette/", "FastAPI + Starlette"),
    ("/uvicorn/", "uvicorn + httptools"),
    ("/httptools/", "uvicorn + httptools"),
    ("/h11/", "uvicorn + httptools"),
    ("/httpx/", CLIENT),
    ("/httpcore/", CLIENT),
    ("/aiohttp/", CLIENT),
    ("/yarl/", CLIENT),
    ("/multidict/", CLIENT),
    ("/ml_pipeline/client/aiohttp_transport", CLIENT),  # before /ml_pipeline/: the transport is the client's
    ("/anyio/", "anyio's worker threads (to_thread), waking the loop"),
    ("/onnxruntime/", "the work: ONNX Runtime, NumPy, Pillow"),
    ("/numpy/", "the work: ONNX Runtime, NumPy, Pillow"),
    ("/PIL/", "the work: ONNX Runtime, NumPy, Pillow"),
    ("/grpc/", "gRPC"),
    ("/ml_pipeline/", "ml_pipeline (our shared package)"),
    ("/preprocess/", "our service code"),
    ("/model/", "our service code"),
    ("/postprocess/", "our service code"),
    ("/asyncio/", "asyncio event loop (its own work)"),
    ("/selectors.py", "asyncio event loop (its own work)"),
    ("/uvloop/", "asyncio event loop (its own work)"),
]
OUR_PACKAGES = ("ml_pipeline/", "preprocess/", "model/", "postprocess/")
STDLIB = re.compile(r"/lib/python3\.\d+/(?!site-packages/|logging/|json/)|/site-packages/anyio/")


@dataclass
class Frame:
    name: str
    file: str
    x: int
    w: int
    y: float
    children: list[Frame] = field(default_factory=list)
    parent: Frame | None = None

    @property
    def self_samples(self) -> int:
        return self.w - sum(child.w for child in self.children)

    @property
    def label(self) -> str:
        return f"{self.name} ({short(self.file)})"


def short(file: str) -> str:
    """A path from its package on (``httpx/_client.py``), or the standard library's (``asyncio/…``)."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in file:
            return file.split(marker, 1)[1]
    stdlib = re.search(r"/lib/python3\.\d+/(.*)", file)
    if stdlib:
        return stdlib[1]
    for package in ("/ml_pipeline/", "/preprocess/", "/model/", "/postprocess/"):
        if package in file:
            return package[1:] + file.split(package, 1)[1]
    return file


def layer(file: str) -> str:
    return next((name for pattern, name in LAYERS if pattern in file), "other")


def attributed(frame: Frame) -> Frame:
    """The innermost frame at or above ``frame`` that is not the standard library's (or ``frame``)."""
    at: Frame | None = frame
    while at is not None:
        if at.file and not STDLIB.search(at.file):
            return at
        at = at.parent
    return frame


def parse(svg: str) -> list[Frame]:
    frames = []
    for match in FRAME.finditer(svg):
        title = TITLE.match(html.unescape(match["title"]))
        name, file = (title["name"], title["file"]) if title else (html.unescape(match["title"]), "")
        frames.append(Frame(name, file, int(match["x"]), int(match["w"]), float(match["y"])))
    if not frames:
        return frames
    levels = sorted({f.y for f in frames})
    by_level = collections.defaultdict(list)
    for f in frames:
        by_level[f.y].append(f)
    # The root side is the level holding the most samples (py-spy draws roots at the bottom).
    roots_low = sum(f.w for f in by_level[levels[0]]) >= sum(f.w for f in by_level[levels[-1]])
    order = levels if roots_low else levels[::-1]
    for parent_level, child_level in itertools.pairwise(order):
        parents = sorted(by_level[parent_level], key=lambda f: f.x)
        for child in by_level[child_level]:
            for parent in parents:
                if parent.x <= child.x < parent.x + parent.w:
                    parent.children.append(child)
                    child.parent = parent
                    break
    return frames


def summary(frames: list[Frame], top: int = 25, cpu_ms: float | None = None) -> str:
    """``cpu_ms``: the process's CPU ms per request while it was sampled, shared out by samples."""
    roots_total = max((f.x + f.w for f in frames), default=0)
    total = roots_total or 1
    ms_per_sample = cpu_ms / total if cpu_ms else None

    def share(n: int) -> str:
        ms = f"  {n * ms_per_sample:6.3f} ms" if ms_per_sample else ""
        return f"{100 * n / total:5.1f} %{ms}"

    head = f"{roots_total} samples"
    if ms_per_sample:
        head += f"; the process spends {cpu_ms:.2f} ms of CPU per request (its counter, not sampled): shared out below"
    lines = [head, "", "self time by layer:"]
    layers: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    for f in frames:
        owner = attributed(f)
        layers[layer(owner.file)] += f.self_samples
        functions[owner.label] += f.self_samples
    lines += [f"  {share(n)}  {name}" for name, n in layers.most_common()]
    lines += ["", f"top {top} functions by self time (standard library frames counted for their caller):"]
    lines += [f"  {share(n)}  {name}" for name, n in functions.most_common(top)]
    inclusive: collections.Counter[str] = collections.Counter()

    def walk(frame: Frame, open_labels: frozenset[str]) -> None:
        if frame.label not in open_labels:  # recursion counted once
            inclusive[frame.label] += frame.w
        for child in frame.children:
            walk(child, open_labels | {frame.label})

    children = {id(c) for f in frames for c in f.children}
    for root in (f for f in frames if id(f) not in children):
        walk(root, frozenset())
    ours = [(n, name) for name, n in inclusive.items() if name.rsplit("(", 1)[-1].startswith(OUR_PACKAGES)]
    lines += ["", f"top {top} of our functions by inclusive time (theirs and everything they call):"]
    lines += [f"  {share(n)}  {name}" for n, name in sorted(ours, reverse=True)[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("svg", help="a py-spy flame graph (--format flamegraph --full-filenames)")
    parser.add_argument("--cpu-ms", type=float, help="the process's CPU ms per request while sampled (its counter)")
    args = parser.parse_args(argv)
    with open(args.svg, encoding="utf-8", errors="replace") as svg:  # py-spy writes some names' raw bytes
        frames = parse(svg.read())
    print(summary(frames, cpu_ms=args.cpu_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
