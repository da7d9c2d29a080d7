"""The stack on Docker Swarm (deploy/swarm/docker-stack.yml), deployed by tests/swarm/run.sh on a
single-node swarm: the photo classified through the entry port published in host mode, requests
spread over both model replicas (DNS round-robin, `endpoint_mode: dnsrr`), the trace in Jaeger,
every task a Prometheus target."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from support.data import COFFEE_JPG, ESPRESSO
from support.jaeger import fetch_trace, tags

pytestmark = pytest.mark.integration

ENTRY = os.environ.get("SWARM_ENTRY_URL", "")
JAEGER = os.environ.get("SWARM_JAEGER_URL", "")
PROMETHEUS = os.environ.get("SWARM_PROMETHEUS_URL", "")
MODEL_REPLICAS = int(os.environ.get("SWARM_MODEL_REPLICAS", "2"))


def _wait(check, what: str, timeout_s: float = 300):
    """Poll ``check()`` until it returns something truthy (tasks start, then warm up)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except httpx.HTTPError as error:
            last = error
        time.sleep(2)
    raise AssertionError(f"{what} not within {timeout_s:.0f}s (last: {last!r})")


def _model_replicas_ready() -> bool:
    """Every model task answers: preprocess has re-resolved `model` to all of them."""
    seen: set[str] = set()
    for _ in range(4 * MODEL_REPLICAS):
        r = httpx.post(f"{ENTRY}/finalize", files={"file": ("coffee.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})
        if r.status_code == 200:
            seen.add(r.json()["model_instance"])
    return len(seen) == MODEL_REPLICAS


@pytest.fixture(scope="module")
def stack_ready():
    _wait(lambda: httpx.get(f"{ENTRY}/ready", timeout=5).status_code == 200, "postprocess ready")
    _wait(_model_replicas_ready, f"all {MODEL_REPLICAS} model replicas answering")


def test_the_photo_is_classified_through_the_published_entry_port(stack_ready):
    r = httpx.post(f"{ENTRY}/finalize", files={"file": ("coffee.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.headers["server"] == "nginx" and "edge;dur=" in r.headers["server-timing"]  # the edge answers
    answer = r.json()
    assert answer["class_id"] == ESPRESSO and answer["backend"] == "onnx"
    assert r.headers["x-trace-id"] == answer["trace_id"]


def test_requests_spread_over_every_model_replica(stack_ready):
    photo = COFFEE_JPG.read_bytes()
    instances = [
        httpx.post(f"{ENTRY}/finalize", files={"file": ("coffee.jpg", photo, "image/jpeg")}).json()["model_instance"]
        for _ in range(40)
    ]
    counts = {instance: instances.count(instance) for instance in set(instances)}
    assert len(counts) == MODEL_REPLICAS, counts
    assert min(counts.values()) >= 8, counts  # spread, not one replica with a stray request


def test_the_request_is_one_trace_in_jaeger_across_the_swarm_tasks(stack_ready):
    answer = httpx.post(
        f"{ENTRY}/finalize", files={"file": ("coffee.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")}
    ).json()
    trace = fetch_trace(JAEGER, answer["trace_id"])
    model_processes = [p for p in trace["processes"].values() if p["serviceName"] == "model"]
    # The replica that answered is the one in the trace: its task's hostname is service.instance.id.
    assert {tags(p)["service.instance.id"] for p in model_processes} == {answer["model_instance"]}


def test_prometheus_scrapes_every_task(stack_ready):
    def targets():
        r = httpx.get(f"{PROMETHEUS}/api/v1/targets", timeout=5)
        up: dict[str, int] = {}
        for target in r.json()["data"]["activeTargets"]:
            if target["health"] == "up":
                up[target["labels"]["job"]] = up.get(target["labels"]["job"], 0) + 1
        expected = {"model": MODEL_REPLICAS, "preprocess": 1, "postprocess": 1}
        collector = {"otel-collector-spanmetrics": 1, "otel-collector": 1}  # its span metrics and its own
        wanted = {**expected, **collector, "jaeger": 1, "prometheus": 1}
        return up if all(up.get(job, 0) == n for job, n in wanted.items()) else None

    up = _wait(targets, "every task up in Prometheus", timeout_s=60)
    assert up["model"] == MODEL_REPLICAS
