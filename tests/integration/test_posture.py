"""The running stack's posture: the things anyone who reaches a port could otherwise do."""

import time

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_prometheus_cannot_be_stopped_over_http(prometheus):
    r = httpx.post(f"{prometheus}/-/quit", timeout=10)
    assert r.status_code == 403, r.text
    assert httpx.get(f"{prometheus}/-/ready", timeout=10).status_code == 200


def _spans(service: str, names: range) -> dict:
    """OTLP/JSON with one span per name, as anybody who can reach the collector may send."""
    now = time.time_ns()
    spans = [{"traceId": f"{i + 1:032x}", "spanId": f"{i + 1:016x}", "name": f"injected-{i}", "kind": 2,
              "startTimeUnixNano": str(now - 1_000_000), "endTimeUnixNano": str(now)} for i in names]
    return {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                               "scopeSpans": [{"scope": {"name": "attacker"}, "spans": spans}]}]}


def test_injected_span_names_cannot_explode_span_metric_series(prometheus, collector):
    service = "posture-test-injector"
    for start in range(0, 3000, 500):  # 3000 distinct span names, over the limit of 1000
        r = httpx.post(f"{collector}/v1/traces", json=_spans(service, range(start, start + 500)), timeout=30)
        assert r.status_code == 200, r.text
    def value(promql: str) -> float:
        result = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10).json()["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    selector = f'traces_span_metrics_calls_total{{service_name="{service}"}}'
    # The overflow series carries no dimensions (not even service_name): that is the point.
    overflow = 'sum(traces_span_metrics_calls_total{otel_metric_overflow="true"})'
    deadline = time.monotonic() + 60
    series = calls = folded = 0.0
    while time.monotonic() < deadline:  # the connector flushes every 5 s, Prometheus scrapes after
        series, calls, folded = value(f"count({selector})"), value(f"sum({selector})"), value(overflow)
        if calls + folded >= 3000:
            break
        time.sleep(2)
    print(f"span-metric series for {service}: {series:.0f} counting {calls:.0f} calls; overflow: {folded:.0f} calls")
    assert 0 < series <= 1000  # the limit holds …
    assert folded >= 2000 and calls + folded >= 3000  # … and the spans over it are counted, not lost
