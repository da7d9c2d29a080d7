"""Sampling in the deployed stack: exact span metrics from every span, the traces the collector
stores, and exemplars that always name a stored, complete trace.

Runs in every pass, judged by the stack's own settings (``STACK_TRACE_*``, the TRACE_* variables
tests/run.sh was given): with ``TRACE_SAMPLING=all`` every trace must be stored; CI's sampling pass
(``TRACE_SAMPLING=tail``, 5 % kept, the collector scaled out as a router and two samplers) checks
the tail sampler's choice: every error trace, every slow trace, and the fraction of the rest,
each trace whole on one sampler.

The load mixes what the rules tell apart: small photos (fast), large PNGs (decoded at full size:
slow), and requests whose deadline has passed (504, an ERROR span). A request is "slow" when
postprocess's own total (Server-Timing) reached TRACE_SLOW_MS, since the trace lasts longer still;
"fast" when even the client waited less than that; the few in between are judged by neither rule.
"""

from __future__ import annotations

import io
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from PIL import Image

from ml_pipeline.core import wire
from ml_pipeline.observability.sampling import TailSampling
from ml_pipeline.observability.stages import parse_server_timing
from support.dashboards import panel_queries
from support.data import COFFEE_JPG
from support.jaeger import PIPELINE, tags

pytestmark = pytest.mark.integration

SAMPLING = TailSampling(
    os.environ.get("STACK_TRACE_SAMPLING", "all"),
    float(os.environ.get("STACK_TRACE_KEEP_PERCENT", "10")),
    int(os.environ.get("STACK_TRACE_SLOW_MS", "500")),
)
TAIL = SAMPLING.mode == "tail"
SCALED_OUT = os.environ.get("STACK_SCALE_OUT") == "1"
SAMPLERS = int(os.environ.get("STACK_OTEL_SAMPLERS", "2")) if SCALED_OUT else 0
# Requests of each kind: 600 small ones put 5 % ± 0.9 points; where every trace is stored (the
# README command's pass) 60 show it as well, in a tenth of the time.
SMALL, LARGE, LATE = (600 if TAIL else 60), 12, 20
LATE_MS = "10"  # a deadline the chain cannot meet (~40 ms), but the upload mostly can (or: 408)
# Kept traces reach Jaeger once decided: decision_wait (20 s, otel/otelcol-config.yml) and batching.
DECIDED_S = 20 + 10 if TAIL else 10
# Each hop's server span, as span metrics name it: the model's by the protocol preprocess calls it
# with (MODEL_PROTOCOL: /predict, the Open Inference Protocol's REST infer, or its gRPC ModelInfer).
SERVER_SPANS = {
    "postprocess": "POST /finalize",
    "preprocess": "POST /process",
    "model": "POST /predict|POST /v2/models/[^/]+/infer|/?inference.GRPCInferenceService/ModelInfer",
}


def large_png() -> bytes:
    """A 3,500 × 3,500 picture (12 Mpx, under MAX_FULL_DECODE_PIXELS) that compresses to little:
    PNG is decoded at full size, so it is the slow kind of upload."""
    ramp = np.linspace(0, 255, 3500, dtype=np.float32)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, -ramp) / 2 + 128, np.tile(ramp, (3500, 1))], -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class Sent:
    def __init__(self, kind: str, response: httpx.Response, waited_s: float):
        self.kind = kind
        self.status = response.status_code
        self.trace_id = response.headers[wire.TRACE_ID_HEADER]
        self.waited_ms = waited_s * 1000
        timings = parse_server_timing(response.headers.get(wire.SERVER_TIMING_HEADER))
        self.total_ms = timings.get("postprocess.total", 0.0)

    @property
    def error(self) -> bool:
        return self.status >= 500

    @property
    def slow(self) -> bool:  # the trace lasted longer than postprocess's own total
        return self.total_ms >= SAMPLING.slow_ms

    @property
    def fast(self) -> bool:  # the trace lasted less than the client waited
        return not self.error and self.waited_ms < SAMPLING.slow_ms


def instant(prometheus: str, expr: str) -> float:
    r = httpx.post(f"{prometheus}/api/v1/query", data={"query": expr}, timeout=10)
    assert r.status_code == 200, f"{expr}: {r.text}"
    return sum(float(s["value"][1]) for s in r.json()["data"]["result"])


def server_calls(prometheus: str, metric: str) -> dict[str, float]:
    """Server spans counted by the collector's span metrics, per hop."""
    return {
        service: instant(
            prometheus, f'sum({metric}{{service_name="{service}", span_kind="SPAN_KIND_SERVER", span_name=~"{name}"}})'
        )
        for service, name in SERVER_SPANS.items()
    }


def eventually(check, timeout_s: float = 30):
    """``check()`` until truthy or ``timeout_s``: the last decisions, batches and scrapes land late."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(2)
    return result


def settle(trace_ids: set[str], ready, timeout_s: float = 20) -> set[str]:
    """The ids for which ``ready(id)`` is still false after ``timeout_s``, all polled together."""
    deadline = time.monotonic() + timeout_s
    pending = {trace_id for trace_id in trace_ids if not ready(trace_id)}
    while pending and time.monotonic() < deadline:
        time.sleep(3)
        pending = {trace_id for trace_id in pending if not ready(trace_id)}
    return pending


def stored(jaeger: str, trace_id: str) -> dict | None:
    r = httpx.get(f"{jaeger}/api/traces/{trace_id}", timeout=10)
    if r.status_code == 200 and r.json().get("data"):
        return r.json()["data"][0]
    assert r.status_code == 404, r.text
    return None


def kept_for_cause(trace: dict) -> bool:
    """Whether the errors or the latency policy keeps this stored trace, by its own spans."""
    failed = any(
        tags(span).get("otel.status_code") == "ERROR" or tags(span).get("error") is True for span in trace["spans"]
    )
    start = min(span["startTime"] for span in trace["spans"])
    end = max(span["startTime"] + span["duration"] for span in trace["spans"])  # microseconds
    return failed or (end - start) // 1000 >= SAMPLING.slow_ms


def services_of(trace: dict) -> set[str]:
    return {trace["processes"][span["processID"]]["serviceName"] for span in trace["spans"]}


def orphans(trace: dict) -> list[str]:
    """Spans whose parent is not in the trace: a trace split or cut short."""
    ids = {span["spanID"] for span in trace["spans"]}
    parents = [
        ref["spanID"] for span in trace["spans"] for ref in span.get("references", []) if ref["refType"] == "CHILD_OF"
    ]
    return [parent for parent in parents if parent not in ids]


def complete(trace: dict | None) -> bool:
    """Whole: no span misses its parent, and a request that reached the model has all three hops."""
    return bool(trace) and not orphans(trace) and ("model" not in services_of(trace) or services_of(trace) >= PIPELINE)


@dataclass
class Load:
    sent: list[Sent]
    calls_before: dict[str, float]  # span metrics of every span, per hop, before the load
    kept_before: dict[str, float]  # and of the stored spans
    started: float  # wall clock
    ended: float

    def decided(self) -> None:
        """Wait until every trace of the load has had its decision and reached Jaeger."""
        time.sleep(max(0.0, self.ended + DECIDED_S - time.time()))

    def scraped(self) -> None:
        """… and Prometheus has scraped the stored spans' metrics after that."""
        time.sleep(max(0.0, self.ended + DECIDED_S + 5 - time.time()))


@pytest.fixture(scope="module")
def mixed_load(stack, prometheus) -> Load:
    """The mixed load, two at a time, and the span-metric call counts before it, once earlier
    tests' spans stopped arriving (the services' export delay, the flush and the scrape: ~15 s)."""

    def counts() -> tuple[dict[str, float], dict[str, float]]:
        return (
            server_calls(prometheus, "traces_span_metrics_calls_total"),
            server_calls(prometheus, "traces_span_metrics_kept_calls_total"),
        )

    settled, deadline = counts(), time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(12)
        previous, settled = settled, counts()
        if settled == previous:
            break
    calls_before, kept_before = settled
    started = time.time()
    large = large_png()
    jobs = (
        [("small", COFFEE_JPG.read_bytes(), "image/jpeg", {})] * SMALL
        + [("large", large, "image/png", {})] * LARGE
        + [("late", COFFEE_JPG.read_bytes(), "image/jpeg", {wire.REQUEST_TIMEOUT_HEADER: LATE_MS})] * LATE
    )
    jobs = [jobs[i] for i in np.random.default_rng(26).permutation(len(jobs))]

    with httpx.Client(base_url=stack["edge"], timeout=60) as client:

        def send(job) -> Sent:
            kind, body, media_type, headers = job
            start = time.perf_counter()
            response = client.post("/finalize", files={"file": ("photo", body, media_type)}, headers=headers)
            return Sent(kind, response, time.perf_counter() - start)

        with ThreadPoolExecutor(2) as pool:
            sent = list(pool.map(send, jobs))
    return Load(sent, calls_before, kept_before, started, time.time())


def test_the_load_is_mixed(mixed_load):
    sent = mixed_load.sent
    assert sum(s.status == 200 for s in sent) >= SMALL + LARGE - 5, [s.status for s in sent if s.status != 200]
    # Past its deadline: 504, or 408 when even the upload had not arrived by then (the client's
    # slowness, a 4xx: sampled like the rest).
    late = [(s.status, round(s.waited_ms)) for s in sent if s.kind == "late"]
    assert {status for status, _ in late} <= {504, 408}, late
    assert sum(status == 504 for status, _ in late) >= LATE // 2, late
    if TAIL:  # the sampling pass sets TRACE_SLOW_MS for the large ones to be slow
        assert sum(s.slow for s in sent) >= LARGE // 2, sorted(s.total_ms for s in sent if s.kind == "large")
    assert sum(s.fast for s in sent) >= SMALL * 0.9, "most small photos should be fast"


def test_span_metrics_count_every_span_before_sampling(jaeger, prometheus, mixed_load):
    """Exact RED: each hop's span-metric call count grew by exactly the requests that hop served.
    Every answered request crossed all three; a 408 (its upload late) only postprocess; a 5xx
    (every one is stored, being an error) the hops its stored trace has server spans of."""
    sent = mixed_load.sent
    mixed_load.decided()
    failed = [s for s in sent if s.error]
    missing = settle({s.trace_id for s in failed}, lambda trace_id: bool(stored(jaeger, trace_id)))
    assert not missing, f"a failed request's trace is always stored: {sorted(missing)[:5]}"
    failed_traces = [stored(jaeger, s.trace_id) for s in failed]
    assert {s.status for s in sent if not s.error} <= {200, 408}
    served = {
        service: sum(s.status == 200 for s in sent)
        + (service == "postprocess") * sum(s.status == 408 for s in sent)
        + sum(
            any(  # a server span of the hop's route (one cut off before routing has none)
                trace["processes"][span["processID"]]["serviceName"] == service
                and tags(span).get("span.kind") == "server"
                and re.fullmatch(SERVER_SPANS[service], span["operationName"])
                for span in trace["spans"]
            )
            for trace in failed_traces
        )
        for service in SERVER_SPANS
    }
    assert served["postprocess"] == len(sent)

    def grown() -> dict[str, float]:
        after = server_calls(prometheus, "traces_span_metrics_calls_total")
        return {service: after[service] - mixed_load.calls_before[service] for service in SERVER_SPANS}

    eventually(lambda: all(grown()[service] >= served[service] for service in SERVER_SPANS))
    assert grown() == served


def test_the_stored_traces_are_what_the_rules_keep(jaeger, prometheus, mixed_load):
    sent, kept_before = mixed_load.sent, mixed_load.kept_before
    mixed_load.decided()
    traces = {s.trace_id: stored(jaeger, s.trace_id) for s in sent}
    due = {s.trace_id for s in sent if s.error or s.slow or SAMPLING.keeps(s.trace_id, error=False, duration_s=0)}

    def arrived(trace_id: str) -> bool:  # a trace the rules keep may still be on its way
        traces[trace_id] = stored(jaeger, trace_id)
        return bool(traces[trace_id])

    settle({trace_id for trace_id in due if not traces[trace_id]}, arrived)
    missing_errors = [s.trace_id for s in sent if s.error and not traces[s.trace_id]]
    missing_slow = [(s.trace_id, s.total_ms) for s in sent if s.slow and not traces[s.trace_id]]
    assert not missing_errors, f"error traces not stored: {missing_errors}"
    assert not missing_slow, f"slow traces not stored: {missing_slow}"
    fast = [s for s in sent if s.fast]
    kept = [s for s in fast if traces[s.trace_id]]
    share = len(kept) / len(fast)
    expected = SAMPLING.keep_percent / 100 if TAIL else 1.0
    assert abs(share - expected) <= 0.03, f"{share:.3f} of {len(fast)} fast traces stored, expected {expected}"
    # The same traces the services' own rule picks: decided by trace id alike everywhere. One more
    # may be stored if its stored spans show why: an ERROR span (a retried attempt of a request
    # that still succeeded) or spans that outlasted the answer past TRACE_SLOW_MS.
    picked = {s.trace_id for s in fast if SAMPLING.keeps(s.trace_id, error=False, duration_s=0)}
    dropped = [s.trace_id for s in fast if s.trace_id in picked and not traces[s.trace_id]]
    assert not dropped, f"{len(dropped)} fast traces the hash picks were not stored: {dropped[:5]}"
    unexplained = [
        s.trace_id
        for s in fast
        if traces[s.trace_id] and s.trace_id not in picked and not kept_for_cause(traces[s.trace_id])
    ]
    assert not unexplained, f"{len(unexplained)} fast traces stored that no rule keeps: {unexplained[:5]}"
    incomplete = [trace_id for trace_id, trace in traces.items() if trace and not complete(trace)]
    assert not incomplete, f"stored traces missing spans: {incomplete[:5]}"
    if SCALED_OUT:  # each trace decided by one sampler, whole
        split = [
            trace_id
            for trace_id, trace in traces.items()
            if trace and len({tags(span).get("otelcol.sampler") for span in trace["spans"]}) != 1
        ]
        assert not split, f"traces split across samplers: {split[:5]}"
        samplers = {tags(span).get("otelcol.sampler") for trace in traces.values() if trace for span in trace["spans"]}
        assert len(samplers) == SAMPLERS, f"stored traces went through {samplers}, not {SAMPLERS} samplers"
    # The kept span metrics count the stored traces' server spans: what Jaeger holds, per hop.
    stored_finalize = sum(1 for trace in traces.values() if trace and "postprocess" in services_of(trace))

    def kept_finalize() -> float:
        return (
            server_calls(prometheus, "traces_span_metrics_kept_calls_total")["postprocess"] - kept_before["postprocess"]
        )

    eventually(lambda: kept_finalize() >= stored_finalize)
    assert kept_finalize() == stored_finalize


EXEMPLAR_QUERIES = [q for q in panel_queries() if q.exemplar]


@pytest.mark.parametrize("query", EXEMPLAR_QUERIES, ids=lambda q: f"{q.panel}/{q.ref_id}")
def test_every_exemplar_names_a_stored_complete_trace(jaeger, prometheus, mixed_load, query):
    """Every exemplar Prometheus returns for an exemplar panel's query, since the load began."""
    started = mixed_load.started
    mixed_load.scraped()
    r = httpx.post(
        f"{prometheus}/api/v1/query_exemplars",
        data={"query": query.promql(), "start": started, "end": time.time()},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    named = {e["labels"]["trace_id"] for series in r.json()["data"] for e in series["exemplars"]}
    assert named, f"no exemplars for panel {query.panel!r}"
    unresolved = sorted(settle(named, lambda trace_id: complete(stored(jaeger, trace_id)), timeout_s=10))
    assert not unresolved, (
        f"{len(unresolved)} of {len(named)} exemplars name no stored, complete trace: {unresolved[:5]}"
    )


SAMPLER_PANELS = [q for q in panel_queries() if "tail_sampling" in q.expr and "vector(0)" not in q.expr]


def test_the_sampling_panels_show_the_sampler_where_it_runs(prometheus, mixed_load):
    """The dashboard's tail-sampler panels have data with TRACE_SAMPLING=tail, and none where no
    collector samples (``all``: Grafana shows "No data", truthfully)."""
    assert SAMPLER_PANELS
    mixed_load.decided()
    for query in SAMPLER_PANELS:
        r = httpx.post(f"{prometheus}/api/v1/query", data={"query": query.promql()}, timeout=10)
        assert r.status_code == 200, f"{query.panel}: {query.expr}: {r.text}"
        assert bool(r.json()["data"]["result"]) == TAIL, f"{query.panel}: {query.expr}: {r.json()['data']}"


def test_prometheus_scrapes_every_collector(prometheus, mixed_load):
    """The router and each sampler (or the one collector): span metrics and their own metrics."""
    collectors = 1 + SAMPLERS  # the router and its samplers, or the one collector
    for job in ("otel-collector-spanmetrics", "otel-collector"):
        r = httpx.post(f"{prometheus}/api/v1/query", data={"query": f'up{{job="{job}"}}'}, timeout=10)
        up = [s["value"][1] for s in r.json()["data"]["result"]]
        assert up == ["1"] * collectors, f"{job}: {up}"
