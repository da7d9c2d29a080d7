"""Prometheus metrics of the three apps, read back through their own ``/metrics`` routes.

The registry is process-wide (module-level metrics), so every assertion is on the change a test
caused, never on absolute values.
"""

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as parse_text_format

from support.apps import make_settings, running_chain
from support.data import COFFEE_JPG

pytestmark = pytest.mark.anyio
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
TENSOR_BYTES = 602_112  # [1,3,224,224] float32


async def scrape(app, accept: str = OPENMETRICS) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metrics.test") as c:
        return await c.get("/metrics", headers={"Accept": accept})


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(all_samples: list, name: str, **labels) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(s.value for s in all_samples if s.name == name and labels.items() <= s.labels.items())


async def test_requests_stages_and_exemplars_are_recorded(coffee_bytes):
    async with running_chain(make_settings()) as client:
        apps = client.apps
        before = {name: samples((await scrape(app)).text) for name, app in apps.items()}
        responses = [
            await client.post("/finalize", files={"file": ("c.jpg", coffee_bytes, "image/jpeg")}) for _ in range(3)
        ]
        bad = await client.post("/finalize", files={"file": ("n.txt", b"not an image", "text/plain")})
        for path in ("/health", "/ready"):
            assert (await client.get(path)).status_code == 200
        assert (await client.get("/no/such/path")).status_code == 404
        after = {name: samples((await scrape(app)).text) for name, app in apps.items()}
    trace_ids = {r.json()["trace_id"] for r in responses}
    assert [r.status_code for r in responses] == [200] * 3 and bad.status_code == 415

    def delta(app_name, name, **labels):
        return value(after[app_name], name, **labels) - value(before[app_name], name, **labels)

    for service, route in (("postprocess", "/finalize"), ("preprocess", "/process"), ("model", "/predict")):
        ok = {"service": service, "route": route, "method": "POST", "status": "200"}
        assert delta(service, "ml_pipeline_requests_total", **ok) == 3, service
        assert delta(service, "ml_pipeline_request_duration_seconds_count", **ok) == 3, service
        assert value(after[service], "ml_pipeline_requests_in_flight", service=service) == 0
    # Bad input is counted with its status on the hop that refused it and the hop that relayed it.
    assert delta("preprocess", "ml_pipeline_requests_total", route="/process", status="415") == 1
    assert delta("postprocess", "ml_pipeline_requests_total", route="/finalize", status="415") == 1
    # Probes and scrapes are not requests; unknown paths share one series instead of minting new ones.
    assert not [s for s in after["postprocess"] if s.labels.get("route") in ("/health", "/ready", "/metrics")]
    assert delta("postprocess", "ml_pipeline_requests_total", route="unmatched", status="404") == 1

    assert delta("model", "ml_pipeline_stage_duration_seconds_count", service="model", stage="inference") == 3
    assert delta("preprocess", "ml_pipeline_stage_duration_seconds_count", service="preprocess", stage="decode") == 4
    assert delta("preprocess", "ml_pipeline_handoff_tensor_bytes_count", transport="http") == 3
    assert delta("preprocess", "ml_pipeline_handoff_tensor_bytes_sum", transport="http") >= 3 * TENSOR_BYTES

    # Exemplars: the duration buckets point at the traces the clients got back.
    exemplar_ids = {
        s.exemplar.labels["trace_id"]
        for s in after["postprocess"]
        if s.name == "ml_pipeline_request_duration_seconds_bucket" and s.exemplar and s.labels["status"] == "200"
    }
    assert exemplar_ids & trace_ids
    stage_exemplars = [
        s for s in after["model"] if s.name == "ml_pipeline_stage_duration_seconds_bucket" and s.exemplar
    ]
    assert {s.exemplar.labels["trace_id"] for s in stage_exemplars} & trace_ids


async def test_info_and_process_metrics():
    async with running_chain(make_settings(service_instance_id="replica-7")) as client:
        response = await scrape(client.apps["model"])
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    all_samples = samples(response.text)
    build = [s for s in all_samples if s.name == "ml_pipeline_build_info" and s.labels["service"] == "model"]
    assert build and build[0].labels["replica"] == "replica-7" and build[0].value == 1
    model = [s for s in all_samples if s.name == "ml_pipeline_model_info"]
    assert model[0].labels == {"name": "random-1000", "backend": "random"}
    assert value(all_samples, "process_cpu_seconds_total") > 0
    assert value(all_samples, "process_resident_memory_bytes") > 10_000_000


async def test_plain_prometheus_format_without_openmetrics_accept():
    async with running_chain(make_settings()) as client:
        await client.post("/finalize", files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})
        response = await scrape(client.apps["postprocess"], accept="text/plain")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert " # {" not in response.text  # exemplars exist only in OpenMetrics
    names = {s.name for family in parse_text_format(response.text) for s in family.samples}
    assert "ml_pipeline_request_duration_seconds_bucket" in names
