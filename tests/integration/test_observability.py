"""The observability stack, live: Prometheus scrapes every replica (on its internal metrics port;
the service ports have no /metrics) and the collector's spanmetrics, exemplars lead to traces Jaeger
has, Jaeger's SPM answers, every dashboard query returns data, methods no route answers are one
`other` label, and a stopped collector costs the pipeline nothing."""

from __future__ import annotations

import math
import socket
import statistics
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text_format

from support.dashboards import panel_queries
from support.data import COFFEE_JPG

pytestmark = pytest.mark.integration
SERVICES = ("postprocess", "preprocess", "model")
SERVER_ROUTES = {"postprocess": "/finalize", "preprocess": "/process", "model": "/predict"}
METRICS_PORT = 9464  # every service container's (compose's METRICS_PORT), reached on the stack's network
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


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


def request_totals(prometheus: str) -> list[float]:
    """Successful requests on every hop so far, from the services' own counters and from the
    collector's span metrics (0 where a series does not exist yet)."""
    totals = []
    for service in SERVICES:
        for expr in (
            f'sum(ml_pipeline_requests_total{{service="{service}", status="200"}})',
            f'sum(traces_span_metrics_calls_total{{service_name="{service}", span_kind="SPAN_KIND_SERVER"}})',
        ):
            result = instant(prometheus, expr)
            totals.append(float(result[0]["value"][1]) if result else 0.0)
    return totals


def counted(prometheus: str, before: list[float], minimum: int) -> bool:
    """Whether Prometheus has scraped at least ``minimum`` more successful requests on every hop
    than ``before``, in both counts (earlier tests' traffic is already in them)."""
    return all(now - then >= minimum for now, then in zip(request_totals(prometheus), before, strict=True))


@pytest.fixture(scope="module")
def load(stack, prometheus) -> list[str]:
    """Traffic for Prometheus to see, with its trace ids, plus one refused upload (a 4xx series).

    In two rounds, each waited for until scraped: rate() needs a series to *increase* between
    two scrapes, and a series created and filled within one scrape interval never does."""
    before = request_totals(prometheus)
    with httpx.Client(base_url=stack["edge"], timeout=30) as client:
        warmup = [finalize(client) for _ in range(5)]
        assert [r.status_code for r in warmup] == [200] * 5
        poll(lambda: counted(prometheus, before, 5), "the first round of requests in Prometheus", timeout_s=90)
        responses = [finalize(client) for _ in range(30)]
        client.post("/finalize", files={"file": ("notes.txt", b"not an image", "text/plain")})
    assert [r.status_code for r in responses] == [200] * 30
    poll(lambda: counted(prometheus, before, 35), "the second round of requests in Prometheus", timeout_s=90)
    return [r.json()["trace_id"] for r in responses]


def replica_addresses(service: str) -> set[str]:
    """Every replica's address, as Prometheus's DNS discovery finds them (the compose service name)."""
    return {info[4][0] for info in socket.getaddrinfo(service, METRICS_PORT, type=socket.SOCK_STREAM)}


def test_prometheus_scrapes_every_replica_of_every_service(prometheus, load):
    for service in SERVICES:
        replicas = {f"{address}:{METRICS_PORT}" for address in replica_addresses(service)}
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
        names: dict[str, set[str]] = {}  # a service's server span names: its routes', and plain
        for s in result:  # "POST" for a request cut off before routing (the edge and hostile tests)
            names.setdefault(s["metric"]["service_name"], set()).add(s["metric"]["span_name"])
        return names

    calls = poll(lambda: (c := server_calls()) and set(SERVICES) <= set(c) and c, "spanmetrics server calls")
    for service, route in SERVER_ROUTES.items():
        assert f"POST {route}" in calls[service], calls[service]
    buckets = instant(
        prometheus,
        'sum by (service_name) (traces_span_metrics_duration_milliseconds_bucket{span_kind="SPAN_KIND_SERVER", le="+Inf"})',
    )
    assert {s["metric"]["service_name"] for s in buckets} >= set(SERVICES)
    per_replica = instant(
        prometheus, 'count by (service_instance_id) (traces_span_metrics_calls_total{service_name="model"})'
    )
    assert per_replica and all(s["metric"].get("service_instance_id") for s in per_replica)


def scrape_replicas(service: str, accept: str = "text/plain") -> dict[str, httpx.Response]:
    """Every replica's own metrics port, by address."""
    return {
        address: httpx.get(f"http://{address}:{METRICS_PORT}/metrics", headers={"Accept": accept}, timeout=10)
        for address in replica_addresses(service)
    }


def request_counts(exposition: str) -> list:
    """The ``ml_pipeline_requests_total`` samples of a Prometheus text exposition."""
    return [
        sample
        for family in parse_text_format(exposition)
        for sample in family.samples
        if sample.name == "ml_pipeline_requests_total"
    ]


@pytest.mark.parametrize("service", SERVICES)
def test_metrics_are_served_on_the_internal_port_only(stack, load, service):
    """The service port answers /metrics like any unknown path (404); the metrics port of every
    replica answers the exposition, OpenMetrics with exemplars when asked."""
    public = [stack[service]] + ([stack["edge"]] if service == "postprocess" else [])  # the entry too
    for url in public:
        r = httpx.get(f"{url}/metrics", headers={"Accept": OPENMETRICS}, timeout=10)
        assert r.status_code == 404, (url, r.text[:300])
        assert "ml_pipeline_" not in r.text and "trace_id=" not in r.text, url
    for address, r in scrape_replicas(service, OPENMETRICS).items():
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text"), address
        assert f'service="{service}"' in r.text, address
        if service == "postprocess":  # one replica: it served the load
            assert ' # {trace_id="' in r.text, "no exemplars in the OpenMetrics exposition"


def test_methods_no_route_answers_are_one_label(stack):
    """WebDAV methods uvicorn's parser accepts reach the app and are answered 405: counted as
    `other`, never as themselves (any client could otherwise add series: ~35 methods were seen)."""
    odd = ("PROPFIND", "MKCOL", "LOCK", "PATCH")

    def other_405s(service: str) -> float:
        return sum(
            s.value
            for r in scrape_replicas(service).values()
            for s in request_counts(r.text)
            if s.labels["method"] == "other" and s.labels["status"] == "405"
        )

    before = {service: other_405s(service) for service in SERVICES}
    for service in SERVICES:
        for method in odd:
            r = httpx.request(method, f"{stack[service]}{SERVER_ROUTES[service]}", timeout=10)
            assert r.status_code == 405, (service, method, r.status_code)
    for service in SERVICES:
        for address, r in scrape_replicas(service).items():
            methods = {s.labels["method"] for s in request_counts(r.text)}
            assert methods <= {"GET", "HEAD", "POST", "GRPC", "other"}, (service, address, methods)
        # Each request went to some replica: together they counted every one as `other`.
        assert other_405s(service) - before[service] == len(odd), service


@pytest.mark.parametrize(
    "selector",
    [
        'ml_pipeline_request_duration_seconds_bucket{service="postprocess"}',
        'ml_pipeline_stage_duration_seconds_bucket{service="model", stage="inference"}',
        'traces_span_metrics_kept_duration_milliseconds_bucket{service_name="preprocess"}',
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


# The tail sampler's panels have data only where it runs (but the drops', 0 without): test_sampling.py.
@pytest.mark.parametrize(
    "query",
    [q for q in panel_queries() if "tail_sampling" not in q.expr or "vector(0)" in q.expr],
    ids=lambda q: f"{q.panel}/{q.ref_id}",
)
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
        with httpx.Client(base_url=stack["edge"], timeout=30) as client:
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
    with httpx.Client(base_url=stack["edge"], timeout=30) as client:

        def traced_again():
            trace_id = finalize(client).json()["trace_id"]
            time.sleep(3)
            r = httpx.get(f"{jaeger}/api/traces/{trace_id}", timeout=5)
            return r.status_code == 200 and r.json().get("data")

        poll(traced_again, "a new trace in Jaeger after the collector restarted", timeout_s=90, interval_s=0)
