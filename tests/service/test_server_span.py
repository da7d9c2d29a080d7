"""Each service's SERVER span (ml_pipeline.observability.asgi.instrument_app): named by method and route,
the HTTP semantic conventions' attributes, the caller's W3C context as parent, an error status only
for a 5xx, none for the probes, and still current where the error envelope is written."""

import httpx
import numpy as np
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from ml_pipeline.core import codec, wire
from model.app import create_app
from support.apps import NetworkASGITransport, make_settings

pytestmark = pytest.mark.anyio
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


async def model_client(exporter):
    app = create_app(make_settings(), span_exporter=exporter)
    transport = NetworkASGITransport(app=app, raise_app_exceptions=False)  # a 500 is an answer here
    return app, httpx.AsyncClient(transport=transport, base_url="http://model.test")


def servers(exporter):
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]


async def test_a_request_is_one_server_span_with_the_conventions_attributes_under_its_caller(exporter):
    app, client = await model_client(exporter)
    async with app.router.lifespan_context(app), client:
        tensor = codec.encode(np.zeros((1, 3, 224, 224), "float32"))
        r = await client.post(
            "/predict",
            content=tensor,
            headers={"Content-Type": wire.NPY_MEDIA_TYPE, "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
        )
    assert r.status_code == 200
    (span,) = servers(exporter)
    assert span.name == "POST /predict"
    assert format(span.context.trace_id, "032x") == CALLER_TRACE == r.headers["x-trace-id"]
    assert span.parent is not None and format(span.parent.span_id, "016x") == CALLER_SPAN
    assert dict(span.attributes) | {"client.address": "?"} == {
        "http.request.method": "POST",
        "http.route": "/predict",
        "http.response.status_code": 200,
        "url.scheme": "http",
        "url.path": "/predict",
        "network.protocol.version": "1.1",
        "client.address": "?",
    }
    assert span.status.status_code is StatusCode.UNSET
    inference = next(s for s in exporter.get_finished_spans() if s.name == "inference")
    assert inference.context.trace_id == span.context.trace_id  # the stage spans are its children


async def test_4xx_is_no_server_error_5xx_is_and_probes_make_no_span(exporter, monkeypatch):
    app, client = await model_client(exporter)
    async with app.router.lifespan_context(app), client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 200
        assert servers(exporter) == []
        assert (await client.post("/predict", content=b"nope")).status_code == 415
        assert (await client.request("BREW", "/predict")).status_code in (404, 405)
        assert (await client.get("/nowhere")).status_code == 404

        def boom(batch):
            raise RuntimeError("the backend broke")

        monkeypatch.setattr(app.state.predictor.backend, "predict", boom)
        tensor = codec.encode(np.zeros((1, 3, 224, 224), "float32"))
        broken = await client.post("/predict", content=tensor, headers={"Content-Type": wire.NPY_MEDIA_TYPE})
    bad, brew, nowhere, failed = servers(exporter)
    assert (bad.name, bad.attributes["http.response.status_code"], bad.status.status_code) == (
        "POST /predict",
        415,
        StatusCode.UNSET,
    )
    assert "error.type" not in bad.attributes
    assert brew.name.startswith("HTTP") and brew.attributes["http.request.method"] == "_OTHER"
    assert brew.attributes["http.request.method_original"] == "BREW"
    assert nowhere.name == "GET" and "http.route" not in nowhere.attributes  # no route: the method alone
    assert broken.status_code == 500
    assert failed.status.status_code is StatusCode.ERROR and failed.attributes["error.type"] == "500"
    # The error envelope was written while the span was current: its trace id is the span's.
    assert broken.json()["error"]["trace_id"] == format(failed.context.trace_id, "032x")


async def test_tracing_off_makes_no_span_and_still_serves(exporter):
    app = create_app(make_settings(tracing_enabled=False))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=NetworkASGITransport(app=app), base_url="http://m") as client:
            r = await client.get("/health")
    assert r.status_code == 200 and servers(exporter) == []


async def test_a_request_answered_before_routing_is_named_by_its_route(exporter):
    """A body over the limit is refused from its Content-Length before the router runs (as a late
    body's 408 or an overload's 503 are): its server span is still its route's, as its request
    metrics are, so span metrics count every request a route was asked."""
    app, client = await model_client(exporter)
    async with app.router.lifespan_context(app), client:
        too_large = b"\0" * (app.state.predictor.max_body_bytes + 1)
        r = await client.post("/predict", content=too_large, headers={"Content-Type": wire.NPY_MEDIA_TYPE})
        unknown = await client.post("/nowhere", content=b"x")
    assert (r.status_code, unknown.status_code) == (413, 404)
    refused, lost = servers(exporter)
    assert refused.name == "POST /predict" and refused.attributes["http.route"] == "/predict"
    assert lost.name == "POST" and "http.route" not in lost.attributes
