"""Prometheus metrics of the three apps: read back in-process as the metrics server answers them
(``metrics.exposition``), from the metrics server itself on a port of its own
(``metrics.serve_metrics``, what ``ml-pipeline run`` starts on ``METRICS_PORT``), and never from
the apps' own port, which has no ``/metrics``.

The registry is process-wide (module-level metrics), so every assertion is on the change a test
caused, never on absolute values.
"""

import socket
import time

import anyio
import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as parse_text_format

from ml_pipeline.core import wire
from ml_pipeline.observability import metrics
from ml_pipeline.observability.sampling import TailSampling
from support.apps import make_settings, running_chain
from support.data import COFFEE_JPG

pytestmark = pytest.mark.anyio
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
TENSOR_BYTES = 602_112  # [1,3,224,224] float32


def scrape(accept: str = OPENMETRICS) -> tuple[str, str]:
    """The registry as the metrics server answers a scraper sending ``accept``: (text, content type)."""
    body, content_type = metrics.exposition(accept)
    return body.decode(), content_type


def snapshot() -> list:
    return samples(scrape()[0])


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(all_samples: list, name: str, **labels) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(s.value for s in all_samples if s.name == name and labels.items() <= s.labels.items())


async def test_requests_stages_and_exemplars_are_recorded(coffee_bytes):
    async with running_chain(make_settings()) as client:
        before = snapshot()
        responses = [
            await client.post("/finalize", files={"file": ("c.jpg", coffee_bytes, "image/jpeg")}) for _ in range(3)
        ]
        bad = await client.post("/finalize", files={"file": ("n.txt", b"not an image", "text/plain")})
        for path in ("/health", "/ready"):
            assert (await client.get(path)).status_code == 200
        assert (await client.get("/no/such/path")).status_code == 404
        after = snapshot()
    trace_ids = {r.json()["trace_id"] for r in responses}
    assert [r.status_code for r in responses] == [200] * 3 and bad.status_code == 415

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    for service, route in (("postprocess", "/finalize"), ("preprocess", "/process"), ("model", "/predict")):
        ok = {"service": service, "route": route, "method": "POST", "status": "200"}
        assert delta("ml_pipeline_requests_total", **ok) == 3, service
        assert delta("ml_pipeline_request_duration_seconds_count", **ok) == 3, service
        assert value(after, "ml_pipeline_requests_in_flight", service=service) == 0
    # Bad input is counted with its status on the hop that refused it and the hop that relayed it.
    assert delta("ml_pipeline_requests_total", service="preprocess", route="/process", status="415") == 1
    assert delta("ml_pipeline_requests_total", service="postprocess", route="/finalize", status="415") == 1
    # Probes are not requests; unknown paths share one series instead of minting new ones.
    assert not [s for s in after if s.labels.get("route") in ("/health", "/ready")]
    assert delta("ml_pipeline_requests_total", service="postprocess", route="unmatched", status="404") == 1

    assert delta("ml_pipeline_stage_duration_seconds_count", service="model", stage="inference") == 3
    assert delta("ml_pipeline_stage_duration_seconds_count", service="preprocess", stage="decode") == 4
    assert delta("ml_pipeline_handoff_tensor_bytes_count", transport="http") == 3
    assert delta("ml_pipeline_handoff_tensor_bytes_sum", transport="http") >= 3 * TENSOR_BYTES

    # Exemplars: the duration buckets point at the traces the clients got back.
    exemplar_ids = {
        s.exemplar.labels["trace_id"]
        for s in after
        if s.name == "ml_pipeline_request_duration_seconds_bucket"
        and s.exemplar
        and s.labels["service"] == "postprocess"
        and s.labels["status"] == "200"
    }
    assert exemplar_ids & trace_ids
    stage_exemplars = [
        s
        for s in after
        if s.name == "ml_pipeline_stage_duration_seconds_bucket" and s.exemplar and s.labels["service"] == "model"
    ]
    assert {s.exemplar.labels["trace_id"] for s in stage_exemplars} & trace_ids


async def test_with_tail_sampling_exemplars_name_only_traces_the_collector_keeps(coffee_bytes):
    """TRACE_SAMPLING=tail: a request's exemplars name its trace only when the collector's rules keep
    it (here: 30 % by trace id, or an error; no request is slow enough), on every hop and stage."""
    rules = TailSampling("tail", keep_percent=30, slow_ms=60_000)
    settings = make_settings(trace_sampling="tail", trace_keep_percent=30, trace_slow_ms=60_000)
    upload = {"file": ("c.jpg", coffee_bytes, "image/jpeg")}
    async with running_chain(settings) as client:
        ok = [await client.post("/finalize", files=upload) for _ in range(40)]
        late = [
            await client.post("/finalize", files=upload, headers={wire.REQUEST_TIMEOUT_HEADER: "1"}) for _ in range(3)
        ]
        after = snapshot()
    assert {r.status_code for r in ok} == {200} and {r.status_code for r in late} == {504}
    ok_ids = {r.headers[wire.TRACE_ID_HEADER] for r in ok}
    late_ids = {r.headers[wire.TRACE_ID_HEADER] for r in late}
    named = {s.exemplar.labels["trace_id"] for s in after if s.name.endswith("_bucket") and s.exemplar}
    picked = {trace_id for trace_id in ok_ids if rules.picks(trace_id)}
    assert named & ok_ids, "no kept trace lent an exemplar"
    assert named & ok_ids <= picked, f"exemplars name {len(named & ok_ids - picked)} traces the sampler drops"
    assert named & late_ids, "a failed request's trace is always kept, so it may be named"


async def test_info_and_process_metrics():
    async with running_chain(make_settings(service_instance_id="replica-7")):
        text, content_type = scrape()
    assert content_type.startswith("application/openmetrics-text")
    all_samples = samples(text)
    build = [s for s in all_samples if s.name == "ml_pipeline_build_info" and s.labels["service"] == "model"]
    assert build and build[0].labels["replica"] == "replica-7" and build[0].value == 1
    model = [s for s in all_samples if s.name == "ml_pipeline_model_info"]
    assert model[0].labels == {"name": "random-1000", "backend": "random"}
    assert value(all_samples, "process_cpu_seconds_total") > 0
    assert value(all_samples, "process_resident_memory_bytes") > 10_000_000


async def test_plain_prometheus_format_without_openmetrics_accept():
    async with running_chain(make_settings()) as client:
        await client.post("/finalize", files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})
        text, content_type = scrape(accept="text/plain")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert " # {" not in text  # exemplars exist only in OpenMetrics
    names = {s.name for family in parse_text_format(text) for s in family.samples}
    assert "ml_pipeline_request_duration_seconds_bucket" in names


# --- the public port has none; the metrics server has them, exemplars included ---------------------


async def test_the_apps_answer_404_on_metrics_like_any_unknown_path():
    async with running_chain(make_settings()) as client:
        before = snapshot()
        answers = {}
        for name, app in client.apps.items():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{name}.test") as c:
                answers[name] = await c.get("/metrics", headers={"Accept": OPENMETRICS})
                assert "/metrics" not in (await c.get("/openapi.json")).json()["paths"], name
        after = snapshot()
    for name, answer in answers.items():
        assert answer.status_code == 404, (name, answer.text[:200])
        assert answer.headers["content-type"] == "application/json", name  # the error envelope, no exposition
        assert "ml_pipeline_" not in answer.text and "trace_id=" not in answer.text, name
        # An ordinary request now: counted under the one `unmatched` route, like any unknown path.
        labels = {"service": name, "route": "unmatched", "method": "GET", "status": "404"}
        assert (
            value(after, "ml_pipeline_requests_total", **labels) - value(before, "ml_pipeline_requests_total", **labels)
            == 1
        ), name


@pytest.fixture
def metrics_server():
    """The metrics server ``ml-pipeline run`` starts, on a free port of 127.0.0.1: its base URL."""
    server = metrics.serve_metrics("127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


async def test_the_metrics_server_answers_openmetrics_with_exemplars_and_text_without(metrics_server, coffee_bytes):
    async with running_chain(make_settings()) as client:
        responses = [
            await client.post("/finalize", files={"file": ("c.jpg", coffee_bytes, "image/jpeg")}) for _ in range(2)
        ]
    trace_ids = {r.json()["trace_id"] for r in responses}
    async with httpx.AsyncClient(base_url=metrics_server, timeout=10) as scraper:
        # What Prometheus sends with exemplar storage on (its scrape protocols, OpenMetrics first).
        om = await scraper.get(
            "/metrics",
            headers={"Accept": f"{OPENMETRICS};q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,*/*;q=0.1"},
        )
        text = await scraper.get("/metrics", headers={"Accept": "text/plain"})
        zipped = await scraper.get("/metrics", headers={"Accept": OPENMETRICS, "Accept-Encoding": "gzip"})
    assert om.status_code == 200 and om.headers["content-type"].startswith("application/openmetrics-text")
    exemplar_ids = {
        s.exemplar.labels["trace_id"]
        for s in samples(om.text)
        if s.name == "ml_pipeline_request_duration_seconds_bucket"
        and s.exemplar
        and s.labels["service"] == "postprocess"
        and s.labels["route"] == "/finalize"
    }
    assert exemplar_ids & trace_ids, "the exemplars are the requests' trace ids"
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert " # {" not in text.text and "ml_pipeline_requests_total" in text.text  # no exemplars in plain text
    assert zipped.headers["content-encoding"] == "gzip" and "ml_pipeline_build_info" in zipped.text


async def test_the_metrics_server_closes_idle_connections_and_turns_away_a_crowd():
    server = metrics.serve_metrics("127.0.0.1", 0, read_timeout_s=0.5, max_scrapes=2)
    address = ("127.0.0.1", server.server_port)

    def closed_by_server(sock: socket.socket) -> bool:
        try:
            return sock.recv(1024) == b""
        except ConnectionResetError:
            return True

    def crowd() -> tuple[bool, float, bool]:
        idle = [socket.create_connection(address, timeout=5) for _ in range(2)]  # they send nothing
        try:
            time.sleep(0.1)  # both hold their slot
            with socket.create_connection(address, timeout=5) as third:
                third.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                turned_away = closed_by_server(third)
            start = time.perf_counter()
            idle_closed = all(closed_by_server(s) for s in idle)  # by the read timeout
            return turned_away, time.perf_counter() - start, idle_closed
        finally:
            for s in idle:
                s.close()

    try:
        turned_away, waited_s, idle_closed = await anyio.to_thread.run_sync(crowd)
        async with httpx.AsyncClient(timeout=5) as scraper:  # the slots are free again
            after = await scraper.get(f"http://{address[0]}:{address[1]}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert turned_away, "a scrape beyond the limit is closed at once, not queued"
    assert idle_closed and waited_s < 2, waited_s
    assert after.status_code == 200 and "process_cpu_seconds_total" in after.text


async def test_methods_no_route_answers_are_counted_as_other():
    """Any client picks the method: ``PROPFIND`` or ``FOO`` must not become a label value."""
    async with running_chain(make_settings()) as client:
        before = snapshot()
        odd = [
            await client.request("PROPFIND", "/finalize"),
            await client.request("FOO", "/finalize"),
            await client.request("FOO", "/no/such/path"),
        ]
        usual = await client.get("/no/such/path")
        after = snapshot()
    assert [r.status_code for r in odd] == [405, 405, 404]
    assert usual.status_code == 404
    methods = {s.labels["method"] for s in after if s.name == "ml_pipeline_requests_total"}
    assert not methods & {"PROPFIND", "FOO"}, methods
    assert methods <= {"GET", "HEAD", "POST", "GRPC", "other"}, methods

    def delta(**labels):
        name = "ml_pipeline_requests_total"
        return value(after, name, service="postprocess", **labels) - value(
            before, name, service="postprocess", **labels
        )

    assert delta(method="other", status="405") == 2
    assert delta(method="other", route="unmatched", status="404") == 1
    assert delta(method="GET", route="unmatched", status="404") == 1  # methods a route answers keep their name
