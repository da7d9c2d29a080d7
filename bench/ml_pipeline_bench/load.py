"""``ml-pipeline-bench run``: a closed-loop (and open-loop) load generator for the pipeline's HTTP routes.

Closed loop: ``concurrency`` workers each send a request, wait for its answer and send the next,
so the offered load adapts to the service (throughput at saturation is what it measures). The
multipart body is encoded once and replayed, so the client spends its CPU on sockets, not on
encoding uploads (it shares the machine with the services it measures). Every response's
``Server-Timing`` header is kept, giving the per-stage breakdown next to the end-to-end latency.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ml_pipeline.core.wire import SERVER_TIMING_HEADER
from ml_pipeline.observability.stages import parse_server_timing
from ml_pipeline_bench.server_cpu import Meter, per_request_ms

# One request: returns (HTTP status, stage timings in ms).
Send = Callable[[], Awaitable[tuple[int, dict[str, float]]]]


@dataclass
class RunResult:
    """One closed-loop run at one concurrency."""

    target: str
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    latencies_ms: list[float] = field(repr=False)
    stages_ms: dict[str, list[float]] = field(repr=False)
    statuses: dict[str, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0  # this process's CPU time during the run: what the load generator itself costs
    reported_ms: dict[str, float] | None = None  # mean/p50/p95/p99 an external tool computed (no raw latencies)
    server_cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU ms per request, per service (--cpu-from)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        stats = self.reported_ms or {
            "mean": float(np.mean(lat)),
            **{f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)},
        }
        return {
            "target": self.target,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "throughput_rps": self.requests / self.duration_s if self.duration_s > 0 else 0.0,
            "mean_ms": stats["mean"],
            "p50_ms": stats["p50"],
            "p95_ms": stats["p95"],
            "p99_ms": stats["p99"],
            "client_cpu_ms_per_request": 1000 * self.client_cpu_s / self.requests if self.requests else 0.0,
            "server_cpu_ms_per_request": dict(self.server_cpu_ms),
            "stages_mean_ms": {name: float(np.mean(v)) for name, v in sorted(self.stages_ms.items())},
            "statuses": dict(self.statuses),
        }


def multipart_body(image: Path) -> tuple[bytes, str]:
    """The upload encoded once: body bytes and its Content-Type (with the boundary)."""
    content_type = mimetypes.guess_type(image.name)[0] or "application/octet-stream"
    request = httpx.Request("POST", "http://bench/", files={"file": (image.name, image.read_bytes(), content_type)})
    return request.read(), request.headers["content-type"]


def http_sender(client: httpx.AsyncClient, url: str, body: bytes, content_type: str) -> Send:
    headers = {"Content-Type": content_type}

    async def send() -> tuple[int, dict[str, float]]:
        response = await client.post(url, content=body, headers=headers)
        await response.aread()
        return response.status_code, parse_server_timing(response.headers.get(SERVER_TIMING_HEADER))

    return send


@dataclass
class _Tally:
    """What a closed loop's workers have recorded so far: each answer's latency, status and stages."""

    latencies: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    def record(self, status: str, timings: dict[str, float], latency_ms: float) -> None:
        self.latencies.append(latency_ms)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status != "200":
            self.errors += 1
        for name, ms in timings.items():
            self.stages.setdefault(name, []).append(ms)

    def result(self, target: str, concurrency: int, duration_s: float, client_cpu_s: float) -> RunResult:
        answers = len(self.latencies)
        return RunResult(
            target,
            concurrency,
            answers,
            self.errors,
            duration_s,
            self.latencies,
            self.stages,
            self.statuses,
            client_cpu_s,
        )


async def _send_once(send: Send) -> tuple[str, dict[str, float]]:
    """One request as (status, stage timings): a failure is an answer too (``transport:<error>``,
    ``exception:<error>``), so one broken request never stops a run."""
    try:
        status, stages = await send()
        return str(status), stages
    except httpx.HTTPError as exc:
        return f"transport:{type(exc).__name__}", {}
    except Exception as exc:  # an in-process pipeline's failure is one failed request too
        return f"exception:{type(exc).__name__}", {}


async def _warm_up(send: Send, concurrency: int, warmup: int) -> None:
    """``warmup`` unrecorded requests at the run's concurrency: connections, caches and the
    services' lazy start-up are paid for before anything is measured."""
    remaining = warmup

    async def warm_worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await _send_once(send)

    await asyncio.gather(*(warm_worker() for _ in range(min(concurrency, warmup))))


async def closed_loop(
    send: Send,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    warmup: int = 0,
    target: str = "",
    progress: bool = True,
    cpu_meter: Meter | None = None,
) -> RunResult:
    """Run ``concurrency`` workers until ``requests`` answers (or ``duration_s`` seconds), after
    ``warmup`` unrecorded requests at the same concurrency. Failures count as errors (status
    ``transport:<error>`` or ``exception:<error>``); they never stop the run. With ``cpu_meter``,
    each service's CPU per request over the recorded requests."""
    if concurrency < 1 or (requests is None) == (duration_s is None):
        raise ValueError("give concurrency >= 1 and exactly one of requests or duration_s")
    if warmup:
        await _warm_up(send, concurrency, warmup)
    cpu_before = await cpu_meter.read() if cpu_meter else {}
    tally = _Tally()
    issued = 0
    bar = _progress_bar(requests, f"{target} c={concurrency}", progress)
    start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = start + duration_s if duration_s is not None else None

    async def worker() -> None:
        nonlocal issued
        while True:
            if requests is not None:
                if issued >= requests:
                    return
                issued += 1
            elif deadline is not None and time.perf_counter() >= deadline:
                return
            t0 = time.perf_counter()
            status, timings = await _send_once(send)
            tally.record(status, timings, (time.perf_counter() - t0) * 1000)
            bar.update(1)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    bar.close()
    result = tally.result(target, concurrency, elapsed, cpu)
    if cpu_meter:
        result.server_cpu_ms = per_request_ms(cpu_before, await cpu_meter.read(), result.requests, cpu_meter.names)
    return result


def _progress_bar(requests: int | None, label: str, enabled: bool) -> Any:
    """A tqdm bar over ``requests`` (None, a timed run: a counter without a total)."""
    from tqdm import tqdm

    return tqdm(total=requests, desc=label, unit="req", disable=not enabled, leave=False, mininterval=0.5)


def inprocess_sender(pipeline: Callable[[bytes], tuple[Any, dict[str, float]]], data: bytes) -> Send:
    """The pipeline called directly in a worker thread (as the services run their CPU-bound
    stages): the no-HTTP limit the chain is compared with."""
    import anyio

    async def send() -> tuple[int, dict[str, float]]:
        _, timings = await anyio.to_thread.run_sync(pipeline, data)
        return 200, timings

    return send


async def run_inprocess(
    image: Path,
    concurrencies: list[int],
    *,
    requests: int | None,
    duration_s: float | None,
    warmup: int,
    progress: bool = True,
) -> list[RunResult]:
    """Closed-loop runs of the in-process pipeline (same preprocessing and model, no HTTP)."""
    from ml_pipeline.settings import MonolithSettings, load_settings
    from monolith.pipeline import InProcessPipeline

    pipeline = InProcessPipeline(load_settings(MonolithSettings))  # before the loop has anything else to do
    send = inprocess_sender(pipeline, image.read_bytes())  # noqa: ASYNC240
    return await _each_concurrency(
        send, concurrencies, "inprocess", requests=requests, duration_s=duration_s, warmup=warmup, progress=progress
    )


async def _each_concurrency(
    send: Send,
    concurrencies: list[int],
    target: str,
    *,
    requests: int | None,
    duration_s: float | None,
    warmup: int,
    progress: bool,
    cpu_meter: Meter | None = None,
) -> list[RunResult]:
    """One closed-loop run of ``send`` per concurrency, one after the other."""
    return [
        await closed_loop(
            send,
            concurrency=c,
            requests=requests,
            duration_s=duration_s,
            warmup=warmup,
            target=target,
            progress=progress,
            cpu_meter=cpu_meter,
        )
        for c in concurrencies
    ]


def _model_path() -> Path:
    """The services' ONNX model (converted on first use), for the pipelines built without them."""
    from ml_pipeline.settings import MonolithSettings, load_settings
    from model.convert import ensure_model

    return ensure_model(load_settings(MonolithSettings).model_path)


async def run_straightforward(
    image: Path,
    concurrencies: list[int],
    *,
    requests: int | None,
    duration_s: float | None,
    warmup: int,
    progress: bool = True,
) -> list[RunResult]:
    """Closed-loop runs of the straightforward pipeline (``straightforward.py``), one process per
    core; its CPU per request is its worker processes' (``workers``)."""
    from ml_pipeline_bench.server_cpu import ProcessCpuMeter
    from ml_pipeline_bench.straightforward import StraightforwardPipeline

    pipeline = StraightforwardPipeline(_model_path())
    data = image.read_bytes()  # noqa: ASYNC240

    async def send() -> tuple[int, dict[str, float]]:
        await pipeline(data)
        return 200, {}

    meter = ProcessCpuMeter("workers", pipeline.pids)
    pipeline.start_all()  # every worker up before the first read: none is started (and charged) mid-run
    try:
        return await _each_concurrency(
            send,
            concurrencies,
            "straightforward",
            requests=requests,
            duration_s=duration_s,
            warmup=max(warmup, pipeline.workers),  # every worker's session has run before anything is measured
            progress=progress,
            cpu_meter=meter,
        )
    finally:
        pipeline.close()


async def run_bare_chain(
    image: Path,
    concurrencies: list[int],
    *,
    requests: int | None,
    duration_s: float | None,
    warmup: int,
    progress: bool = True,
) -> list[RunResult]:
    """Closed-loop runs of the bare chain (``bare_chain.py``) over HTTP like any target; its CPU per
    request is each of its three processes' (from /proc)."""
    from ml_pipeline.settings import MonolithSettings, load_settings
    from ml_pipeline_bench.bare_chain import BareChain

    chain = BareChain(_model_path(), load_settings(MonolithSettings).ort_intra_op_threads)  # as the services run
    try:
        url = chain.start()  # before any load: blocking the loop here delays nothing measured
        results = await run_http(
            url,
            image,
            concurrencies,
            requests=requests,
            duration_s=duration_s,
            warmup=warmup,
            progress=progress,
            cpu_meter=chain.cpu_meter(),
        )
    finally:
        chain.close()
    for result in results:
        result.target = "bare-chain"
    return results


def npy_body(image: Path) -> tuple[bytes, str]:
    """The image as the model's input: preprocessed once, encoded as a ``.npy`` body (for /predict)."""
    from ml_pipeline.core import codec
    from ml_pipeline.core.wire import NPY_MEDIA_TYPE
    from ml_pipeline.settings import MonolithSettings, load_settings
    from preprocess import imaging

    settings = load_settings(MonolithSettings)  # its image settings, as the services read them
    img = imaging.decode(image.read_bytes(), settings.max_image_pixels, settings.max_full_decode_pixels)
    return codec.encode(imaging.normalize(imaging.resize_crop(img))), NPY_MEDIA_TYPE


async def run_http(
    url: str,
    image: Path,
    concurrencies: list[int],
    *,
    requests: int | None,
    duration_s: float | None,
    warmup: int,
    timeout_s: float = 60,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: bool = True,
    cpu_meter: Meter | None = None,
    body: tuple[bytes, str] | None = None,
) -> list[RunResult]:
    """Closed-loop runs against ``url`` at each concurrency over pooled keep-alive connections (at
    most one in use per worker); each request uploads ``image`` as multipart, or sends ``body``
    (bytes, Content-Type) as it is."""
    payload, content_type = body or multipart_body(image)

    async def each_concurrency(send: Send) -> list[RunResult]:
        return await _each_concurrency(
            send,
            concurrencies,
            url,
            requests=requests,
            duration_s=duration_s,
            warmup=warmup,
            progress=progress,
            cpu_meter=cpu_meter,
        )

    if transport is not None:  # an app in this process: httpx over its ASGI transport
        async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
            return await each_concurrency(http_sender(client, url, payload, content_type))
    # On the network the lean sender (the overload study's and the soak's too), so the driver's own
    # CPU does not decide the ratios.
    raw = RawHttpSender(url, payload, content_type, timeout_s)
    try:
        return await each_concurrency(raw)
    finally:
        raw.close()


# --------------------------------------------------------------------------- open loop (overload)


@dataclass
class OpenLoopResult:
    """One open-loop run: requests sent at a fixed rate whatever the answers, as real clients do."""

    target: str
    offered_rps: float  # the rate asked for
    duration_s: float  # the sending window
    good_within_s: float  # an answer counts as goodput when it is a 200 within this
    outcomes: list[tuple[str, float]] = field(repr=False)  # (status, latency ms) per request
    client_cpu_s: float = 0.0
    capacity_rps: float | None = None

    def summary(self) -> dict[str, Any]:
        ok = np.asarray([ms for status, ms in self.outcomes if status == "200"] or [np.nan])
        refused = np.asarray([ms for status, ms in self.outcomes if status in ("503", "429")] or [np.nan])
        good = sum(1 for status, ms in self.outcomes if status == "200" and ms <= self.good_within_s * 1000)
        statuses: dict[str, int] = {}
        for status, _ in self.outcomes:
            statuses[status] = statuses.get(status, 0) + 1
        sent = len(self.outcomes)
        return {
            "target": self.target,
            "offered_rps": self.offered_rps,
            "sent_rps": sent / self.duration_s,
            "load_x": self.offered_rps / self.capacity_rps if self.capacity_rps else None,
            "capacity_rps": self.capacity_rps,
            "duration_s": self.duration_s,
            "sent": sent,
            "goodput_rps": good / self.duration_s,
            "goodput_x": good / self.duration_s / self.capacity_rps if self.capacity_rps else None,
            "good_within_s": self.good_within_s,
            "admitted_p50_ms": float(np.percentile(ok, 50)),
            "admitted_p99_ms": float(np.percentile(ok, 99)),
            "refused_p50_ms": float(np.percentile(refused, 50)),
            "refused_p99_ms": float(np.percentile(refused, 99)),
            "client_cpu_ms_per_request": 1000 * self.client_cpu_s / sent if sent else 0.0,
            "statuses": statuses,
        }


class _StaleConnection(OSError):
    """A pooled connection was closed by the server before it answered."""


class RawHttpSender:
    """One pre-encoded HTTP/1.1 POST, sent over a pool of keep-alive connections with bare
    asyncio streams. An open loop at hundreds of requests per second shares the machine with the
    services it measures: httpx's ~1.5 ms of CPU per request would make the client itself the
    bottleneck (and its delays the measured latency); this costs a fraction of that."""

    def __init__(self, url: str, body: bytes, content_type: str, timeout_s: float = 30):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the raw sender speaks plain http:// only, not {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        self.request = head.encode("latin-1") + body
        self.timeout_s = timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def __call__(self) -> tuple[int, dict[str, float]]:
        async with asyncio.timeout(self.timeout_s):
            while self._idle:  # a pooled connection the server may have closed (keep-alive timeout)
                reader, writer = self._idle.pop()
                try:
                    return await self._exchange(reader, writer)
                except _StaleConnection:
                    continue
            reader, writer = await asyncio.open_connection(self.host, self.port)
            return await self._exchange(reader, writer)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, dict[str, float]]:
        try:
            writer.write(self.request)
            status, keep_alive, timing = await self._read_response(reader)
        except BaseException:
            writer.close()
            raise
        if keep_alive:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return status, parse_server_timing(timing.decode("latin-1")) if timing else {}

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
        """(status, whether the connection stays open, the Server-Timing header's value)."""
        try:
            status_line = await reader.readline()
        except ConnectionResetError:
            raise _StaleConnection from None
        if not status_line:  # closed before answering: nothing was processed, safe to send again
            raise _StaleConnection
        status = int(status_line.split()[1])
        length, chunked, keep_alive, timing = 0, False, True, b""
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.lower() == b"chunked"
            elif name == b"connection":
                keep_alive = value.lower() != b"close"
            elif name == b"server-timing":  # the services' stage breakdown
                timing = value
        if not chunked:
            await reader.readexactly(length)
            return status, keep_alive, timing
        while size := int((await reader.readline()).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readline()
        return status, keep_alive, timing

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def open_loop(
    send: Send, *, rate_rps: float, duration_s: float, good_within_s: float, target: str = ""
) -> OpenLoopResult:
    """Send at ``rate_rps`` for ``duration_s`` (evenly spaced), each request on its own, never
    waiting for earlier answers: the load a service sees from many independent clients."""
    import resource

    loop = asyncio.get_running_loop()
    outcomes: list[tuple[str, float]] = []

    async def one() -> None:
        start = time.perf_counter()
        try:
            status, _ = await send()
            outcome = str(status)
        except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError) as exc:
            outcome = f"transport:{type(exc).__name__}"
        outcomes.append((outcome, (time.perf_counter() - start) * 1000))

    cpu_before = _cpu_seconds(resource.RUSAGE_SELF)
    tasks = []
    begin = loop.time()
    for i in range(int(rate_rps * duration_s)):
        delay = begin + i / rate_rps - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one()))
    await asyncio.gather(*tasks)
    cpu = _cpu_seconds(resource.RUSAGE_SELF) - cpu_before
    return OpenLoopResult(target, rate_rps, duration_s, good_within_s, outcomes, cpu)


def _cpu_seconds(who: int) -> float:
    """User + system CPU so far of this process (``RUSAGE_SELF``) or its finished children
    (``RUSAGE_CHILDREN``): what the load generator itself costs."""
    import resource

    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def measure_capacity(send: Send, url: str, concurrencies: tuple[int, ...], duration_s: float) -> float:
    """The best successful answers per second of closed loops at ``concurrencies``, ``duration_s``
    each, the first after a warm-up of 50 requests: the rate the open loops are multiples of."""
    capacity = 0.0
    for i, concurrency in enumerate(concurrencies):
        probe = await closed_loop(
            send, concurrency=concurrency, duration_s=duration_s, warmup=0 if i else 50, target=url, progress=False
        )
        capacity = max(capacity, probe.statuses.get("200", 0) / probe.duration_s)
    if capacity <= 0:
        raise RuntimeError(f"no successful answers from {url} while measuring capacity: {probe.statuses}")
    return capacity


async def run_overload(
    url: str,
    image: Path,
    multiples: list[float],
    *,
    duration_s: float,
    good_within_s: float = 2.0,
    capacity_s: float = 10.0,
    capacity_concurrencies: tuple[int, ...] = (8, 16),
    timeout_s: float = 30,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[float, list[OpenLoopResult]]:
    """Capacity first (the best successful answers per second of closed loops at
    ``capacity_concurrencies``, ``capacity_s`` each, after a warm-up), then an open-loop run at
    each multiple of it."""
    body, content_type = multipart_body(image)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, transport=transport) as client:
        # Real sockets get the lean sender; an in-process transport (tests) the httpx one.
        # Open loop: waiting much past the goodput bound measures nothing (and piles up sockets).
        raw = RawHttpSender(url, body, content_type, min(timeout_s, 5 * good_within_s)) if transport is None else None
        send = raw or http_sender(client, url, body, content_type)
        capacity = await measure_capacity(send, url, capacity_concurrencies, capacity_s)
        results = []
        for multiple in multiples:
            result = await open_loop(
                send, rate_rps=capacity * multiple, duration_s=duration_s, good_within_s=good_within_s, target=url
            )
            result.capacity_rps = capacity
            results.append(result)
            await asyncio.sleep(2)  # let the queues drain between runs
        if raw is not None:
            raw.close()
    return capacity, results


def markdown_table(header: list[str], align: str, rows: Iterable[Iterable[object]]) -> list[str]:
    """A Markdown table's lines (also readable in a terminal): ``align`` has a letter per column,
    ``l`` for text, ``r`` for numbers. An empty header cell (a column of marks) is written ``| |``."""
    head = "|" + "|".join(f" {cell} " if cell else " " for cell in header) + "|"
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return [head, rule, *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def format_overload_table(summaries: list[dict[str, Any]]) -> str:
    header = ["load × capacity", "offered req/s", "goodput req/s", "goodput × capacity", "admitted p50 ms"]
    header += ["admitted p99 ms", "refused p50 ms", "statuses"]
    rows = (
        [
            f"{s['load_x']:.1f}",
            f"{s['offered_rps']:.1f}",
            f"{s['goodput_rps']:.1f}",
            f"{s['goodput_x']:.2f}",
            f"{s['admitted_p50_ms']:.0f}",
            f"{s['admitted_p99_ms']:.0f}",
            f"{s['refused_p50_ms']:.1f}",
            s["statuses"],
        ]
        for s in summaries
    )
    return "\n".join(markdown_table(header, "rrrrrrrl", rows))


# wrk's script: POST the encoded upload, and print the results as one JSON line when done.
_WRK_SCRIPT = """
wrk.method = "POST"
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE")
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests": %d, "duration_us": %d, "errors": %d, "status_errors": %d, '
    .. '"mean_us": %f, "p50_us": %d, "p95_us": %d, "p99_us": %d}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency.mean, latency:percentile(50),
    latency:percentile(95), latency:percentile(99)))
end
"""


def _wrk_once(
    wrk: str, url: str, seconds: float, connections: int, script: Path, env: dict[str, str]
) -> dict[str, Any]:
    """One wrk run (one thread, ``connections`` keep-alive connections): its JSON summary line."""
    import subprocess

    cmd = [wrk, "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "60s"]
    cmd += ["-s", str(script), url]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(line.removeprefix("WRK_JSON "))


def _wrk_result(url: str, concurrency: int, report: dict[str, Any], cpu_s: float) -> RunResult:
    """wrk's summary as a run: its percentiles stand in for raw latencies (it keeps none)."""
    errors = report["errors"] + report["status_errors"]
    statuses = {"200": report["requests"] - report["status_errors"], **({"error": errors} if errors else {})}
    reported = {k: report[f"{k}_us"] / 1000 for k in ("mean", "p50", "p95", "p99")}
    duration_s = report["duration_us"] / 1e6
    return RunResult(
        url, concurrency, report["requests"], errors, duration_s, [], {}, statuses, cpu_s, reported_ms=reported
    )


def run_wrk(
    url: str, image: Path, concurrencies: list[int], *, duration_s: float, warmup_s: float = 2, wrk: str = "wrk"
) -> list[RunResult]:
    """The same closed loop driven by wrk (C, event-driven, HTTP/1.1 keep-alive, one thread), to
    check this driver's numbers and its client cost against a well-known tool. The same multipart
    body is replayed; wrk runs for a duration, reports percentiles (not raw latencies) and keeps
    no response headers, so no stage breakdown. Client CPU comes from the child's rusage."""
    import os
    import resource
    import tempfile

    body, content_type = multipart_body(image)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        (Path(tmp) / "body").write_bytes(body)
        script.write_text(_WRK_SCRIPT)
        env = {**os.environ, "WRK_BODY": str(Path(tmp) / "body"), "WRK_CONTENT_TYPE": content_type}
        for concurrency in concurrencies:
            if warmup_s:
                _wrk_once(wrk, url, warmup_s, concurrency, script, env)
            before = _cpu_seconds(resource.RUSAGE_CHILDREN)
            report = _wrk_once(wrk, url, duration_s, concurrency, script, env)
            cpu = _cpu_seconds(resource.RUSAGE_CHILDREN) - before
            results.append(_wrk_result(url, concurrency, report, cpu))
    return results


def format_table(summaries: list[dict[str, Any]]) -> str:
    """A Markdown table of the summaries (also readable in a terminal)."""
    header = ["target", "c", "requests", "errors", "req/s", "mean ms", "p50 ms", "p95 ms", "p99 ms"]
    rows = (
        [s["target"], s["concurrency"], s["requests"], s["errors"], f"{s['throughput_rps']:.1f}"]
        + [f"{s[k]:.1f}" for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms")]
        for s in summaries
    )
    return "\n".join(markdown_table(header, "lrrrrrrrr", rows))


def write_results(path: Path, results: list[RunResult], meta: dict[str, Any]) -> None:
    """JSON with the summaries and the raw latencies (to recompute any percentile later)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "runs": [{**r.summary(), "latencies_ms": r.latencies_ms} for r in results]}
    path.write_text(json.dumps(payload, indent=1))
