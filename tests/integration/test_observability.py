"""The observability stack, live: Prometheus scrapes every replica and the collector's spanmetrics,
exemplars lead to traces Jaeger has, Jaeger's SPM answers, every dashboard query returns data, and
a stopped collector costs the pipeline nothing."""

from __future__ import annotations

import math
import socket
import statistics
import time
from urllib.parse import urlsplit

import httpx
import pytest

from support.dashboards import panel_queries
from support.data import COFFEE_JPG

pytestmark = pytest.mark.integration
SERVICES = ("postprocess", "preprocess", "model")
SERVER_ROUTES = {"postprocess": "/finalize", "preprocess": "/process", "model": "/predict"}


def poll(check, what: str, timeout_s: float = 60, interval_s: float = 1.0):
    """``check()`` until it returns something truthy; scrapes, spanmetrics flushes and batched
    span export each take a few seconds."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"{what}: nothing after {timeout_s}s (last: {last!r})")


def instant(prometheus: str, expr: str) -> list[dict]:
    r = httpx.post(f"{prometheus}/api/v1/query", data={"query": expr}, timeout=10)
    assert r.status_code == 200, f"{expr}: {r.text}"
    return r.json()["data"]["result"]


def exemplars(prometheus: str, expr: str, lookback_s: float = 900) -> list[dict]:
    now = time.time()
    r = httpx.post(
        f"{prometheus}/api/v1/query_exemplars", data={"query": expr, "start": now - lookback_s, "end": now}, timeout=10
    )
    assert r.status_code == 200, f"{expr}: {r.text}"
    return [e for series in r.json()["data"] for e in series["exemplars"]]


def finalize(client: httpx.Client) -> httpx.Response:
    return client.post("/finalize", files={"file": ("coffee.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})


def counted(prometheus: str, minimum: int) -> bool:
    """Whether Prometheus has scraped at least ``minimum`` successful requests on every hop, both
    from the services' own counters and from the collector's spanmetrics."""
    for service in SERVICES:
        own = instant(prometheus, f'sum(ml_pipeline_requests_total{{service="{service}", status="200"}})')
        spans = instant(
            prometheus,
            f'sum(traces_span_metrics_calls_total{{service_name="{service}", span_kind="SPAN_KIND_SERVER"}})',
        )
        if not own or not spans or min(float(own[0]["value"][1]), float(spans[0]["value"][1])) < minimum:
            return False
    return True


@pytest.fixture(scope="module")
def load(stack, prometheus) -> list[str]:
    """Traffic for Prometheus to see, with its trace ids, plus one refused upload (a 4xx series).

    In two rounds, each waited for until scraped: rate() needs a series to *increase* between
    two scrapes, and a series created and filled within one scrape interval never does."""
    with httpx.Client(base_url=stack["postprocess"], timeout=30) as client:
        warmup = [finalize(client) for _ in range(5)]
        assert [r.status_code for r in warmup] == [200] * 5
        poll(lambda: counted(prometheus, 5), "the first round of requests in Prometheus", timeout_s=90)
        responses = [finalize(client) for _ in range(30)]
        client.post("/finalize", files={"file": ("notes.txt", b"not an image", "text/plain")})
    assert [r.status_code for r in responses] == [200] * 30
    poll(lambda: counted(prometheus, 35), "the second round of requests in Prometheus", timeout_s=90)
    return [r.json()["trace_id"] for r in responses]


def test_prometheus_scrapes_every_replica_of_every_service(prometheus, load):
    for service in SERVICES:
        host = urlsplit(f"http://{service}:5000").hostname
        replicas = {f"{info[4][0]}:5000" for info in socket.getaddrinfo(host, 5000, type=socket.SOCK_STREAM)}
        up = {s["metric"]["instance"]: s["value"][1] for s in instant(prometheus, f'up{{job="{service}"}}')}
        assert up == dict.fromkeys(replicas, "1"), f"{service}: DNS has {replicas}, Prometheus scrapes {up}"
        cpu = poll(lambda: instant(prometheus, f'process_cpu_seconds_total{{job="{service}"}}'), f"{service} CPU")
        assert {s["metric"]["instance"] for s in cpu} == replicas
        assert all(float(s["value"][1]) > 0 for s in cpu)


def test_spanmetrics_for_every_hop(prometheus, load):
    def server_calls():
        result = instant(
            prometheus,
            'sum by (service_name, span_name) (traces_span_metrics_calls_total{span_kind="SPAN_KIND_SERVER"})',
        )
        return {s["metric"]["service_name"]: s["metric"]["span_name"] for s in result}

    calls = poll(lambda: (c := server_calls()) and set(SERVICES) <= set(c) and c, "spanmetrics server calls")
    for service, route in SERVER_ROUTES.items():
        assert calls[service] == f"POST {route}"
    buckets = instant(
        prometheus,
        'sum by (service_name) (traces_span_metrics_duration_milliseconds_bucket{span_kind="SPAN_KIND_SERVER", le="+Inf"})',
    )
    assert {s["metric"]["service_name"] for s in buckets} >= set(SERVICES)
    per_replica = instant(
        prometheus, 'count by (service_instance_id) (traces_span_metrics_calls_total{service_name="model"})'
    )
    assert per_replica and all(s["metric"].get("service_instance_id") for s in per_replica)


@pytest.mark.parametrize(
    "selector",
    [
        'ml_pipeline_request_duration_seconds_bucket{service="postprocess"}',
        'ml_pipeline_stage_duration_seconds_bucket{service="model", stage="inference"}',
        'traces_span_metrics_duration_milliseconds_bucket{service_name="preprocess"}',
    ],
)
def test_exemplars_are_traces_jaeger_returns(prometheus, jaeger, load, selector):
    found = poll(lambda: exemplars(prometheus, selector), f"exemplars of {selector}")
    trace_ids = {e["labels"]["trace_id"] for e in found}
    for trace_id in sorted(trace_ids)[:5]:

        def in_jaeger():
            r = httpx.get(f"{jaeger}/api/traces/{trace_id}", timeout=5)
            return r.status_code == 200 and r.json().get("data")

        poll(in_jaeger, f"trace {trace_id} (exemplar of {selector}) in Jaeger", timeout_s=30)


@pytest.mark.parametrize("service", SERVICES)
def test_jaeger_service_performance_monitoring(jaeger, load, service):
    def latencies():
        params = {
            "service": service,
            "quantile": 0.95,
            "endTs": int(time.time() * 1000),
            "lookback": 900_000,
            "step": 5_000,
            "ratePer": 600_000,
        }
        r = httpx.get(f"{jaeger}/api/metrics/latencies", params=params, timeout=10)
        assert r.status_code == 200, r.text
        # Protobuf JSON: a double is a number, or a string for NaN (no calls in that step).
        values = [float(p["gaugeValue"]["doubleValue"]) for m in r.json()["metrics"] for p in m["metricPoints"]]
        return [v for v in values if math.isfinite(v) and v > 0]

    values = poll(latencies, f"Jaeger SPM p95 latency of {service}", timeout_s=60, interval_s=2)
    assert all(0 < v < 10_000 for v in values)  # milliseconds


@pytest.mark.parametrize("query", panel_queries(), ids=lambda q: f"{q.panel}/{q.ref_id}")
def test_every_dashboard_panel_query_returns_data(prometheus, load, query):
    result = poll(
        lambda: instant(prometheus, query.promql()), f"dashboard panel '{query.panel}' {query.ref_id}: {query.expr}"
    )
    assert all(s["value"][1] not in ("NaN", "+Inf", "-Inf") for s in result), result
    if query.exemplar:
        assert poll(lambda: exemplars(prometheus, query.promql()), f"exemplars for panel '{query.panel}'")


def test_pipeline_serves_at_normal_latency_with_the_collector_stopped(stack, stack_control, jaeger):
    """Backpressure: span export is asynchronous, bounded and drops when it must; it never waits
    on the collector inside a request."""

    def latencies_ms(n: int) -> list[float]:
        out = []
        with httpx.Client(base_url=stack["postprocess"], timeout=30) as client:
            for _ in range(n):
                start = time.perf_counter()
                assert finalize(client).status_code == 200
                out.append((time.perf_counter() - start) * 1000)
        return out

    latencies_ms(3)  # warm
    before = statistics.median(latencies_ms(15))
    stopped = stack_control.stop("otel-collector")
    assert stopped, "no otel-collector container to stop"
    try:
        during = latencies_ms(30)  # > one batch export interval, several failed exports
    finally:
        stack_control.start(stopped)
        for container in stopped:
            stack_control.wait_healthy(container)
    print(
        f"collector stopped: median {statistics.median(during):.1f} ms (before: {before:.1f} ms), max {max(during):.1f} ms"
    )
    # Generous for a noisy 2-core machine, still far below any export timeout (2 s) or retry.
    assert statistics.median(during) <= 1.5 * before + 25, (before, during)
    assert max(during) < 1000, during

    # And tracing recovers once the collector is back.
    with httpx.Client(base_url=stack["postprocess"], timeout=30) as client:

        def traced_again():
            trace_id = finalize(client).json()["trace_id"]
            time.sleep(3)
            r = httpx.get(f"{jaeger}/api/traces/{trace_id}", timeout=5)
            return r.status_code == 200 and r.json().get("data")

        poll(traced_again, "a new trace in Jaeger after the collector restarted", timeout_s=90, interval_s=0)
