"""The three apps wired together in one process: answers, traces and every error path."""

import numpy as np
import pytest
from opentelemetry.trace import SpanKind, StatusCode
from PIL import Image

from support.apps import NetworkASGITransport, free_port, make_settings, running_chain
from support.data import CAT_CLASSES, CHELSEA_JPG, COFFEE_JPG, ESPRESSO, image_bytes
from support.faulty import never_answers
from support.traces import assert_complete_chain, by_trace, service

pytestmark = pytest.mark.anyio


def upload(data: bytes, name="photo.jpg", content_type="image/jpeg"):
    return {"file": (name, data, content_type)}


async def test_random_backend_answers_deterministically(coffee_bytes):
    async with running_chain(make_settings()) as client:
        first = (await client.post("/finalize", files=upload(coffee_bytes))).json()
        again = (await client.post("/finalize", files=upload(coffee_bytes))).json()
    assert first["backend"] == "random" and first["model"] == "random-1000"
    assert (first["class_id"], first["score"]) == (again["class_id"], again["score"])
    assert next(p["class_id"] for p in first["top5"]) == first["class_id"]
    assert first["trace_id"] != again["trace_id"]


async def test_real_model_classifies_photos(coffee_bytes):
    async with running_chain(make_settings(model_backend="onnx")) as client:
        coffee = await client.post("/finalize", files=upload(coffee_bytes))
        cat = await client.post("/finalize", files=upload(CHELSEA_JPG.read_bytes()))
    assert coffee.status_code == 200, coffee.text
    body = coffee.json()
    assert (body["class_id"], body["label"], body["model"], body["backend"]) == (
        ESPRESSO,
        "espresso",
        "efficientnet-lite0",
        "onnx",
    )
    assert body["score"] == pytest.approx(0.96, abs=0.03)
    assert len(body["top5"]) == 5 and sum(p["score"] for p in body["top5"]) <= 1.0
    assert cat.json()["class_id"] in CAT_CLASSES
    stages = {
        "preprocess.decode",
        "preprocess.resize",
        "preprocess.normalize",
        "preprocess.handoff",
        "model.tensor_decode",
        "model.inference",
        "model.tensor_encode",
        "postprocess.forward",
        "postprocess.postprocess",
        "postprocess.total",
    }
    assert stages == set(body["timings_ms"]) and all(v >= 0 for v in body["timings_ms"].values())
    assert body["timings_ms"]["postprocess.total"] >= body["timings_ms"]["model.inference"]


async def test_one_complete_trace_per_request(exporter, coffee_bytes):
    async with running_chain(make_settings(), exporter) as client:
        responses = [await client.post("/finalize", files=upload(coffee_bytes)) for _ in range(3)]
    traces = by_trace(exporter.get_finished_spans())
    client_ids = [r.json()["trace_id"] for r in responses]
    assert sorted(traces) == sorted(client_ids) and len(set(client_ids)) == 3
    for r in responses:
        assert r.headers["x-trace-id"] == r.json()["trace_id"]
        servers = assert_complete_chain(traces[r.json()["trace_id"]])
        assert servers["model"].resource.attributes["service.instance.id"]
    spans = traces[client_ids[0]]
    inference = next(s for s in spans if s.name == "inference")
    assert (
        inference.attributes["ml_pipeline.model.backend"] == "random"
        and inference.attributes["ml_pipeline.batch.size"] == 1
    )
    handoff = next(s for s in spans if s.name == "handoff")
    assert (
        handoff.attributes["ml_pipeline.tensor.bytes"] > 600_000
        and handoff.attributes["ml_pipeline.handoff.transport"] == "http"
    )
    decode = next(s for s in spans if s.name == "decode")
    assert (decode.attributes["ml_pipeline.image.width"], decode.attributes["ml_pipeline.image.height"]) == (600, 400)


async def test_probes_make_no_spans(exporter):
    async with running_chain(make_settings(), exporter) as client:
        assert (await client.get("/health")).status_code == 200
        ready = await client.get("/ready")
    assert ready.status_code == 200
    assert exporter.get_finished_spans() == ()


async def test_trusted_callers_trace_context_is_continued(exporter, coffee_bytes):
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{parent_trace}-00f067aa0ba902b7-01"}
    async with running_chain(make_settings(trust_client_trace_context=True), exporter) as client:
        r = await client.post("/finalize", files=upload(coffee_bytes), headers=headers)
    assert r.json()["trace_id"] == parent_trace
    assert {service(s) for s in by_trace(exporter.get_finished_spans())[parent_trace]} == {
        "postprocess",
        "preprocess",
        "model",
    }


@pytest.mark.parametrize("flags", ["01", "00"], ids=["sampled", "not-sampled"])
async def test_the_edge_starts_its_own_trace_and_links_the_callers(exporter, coffee_bytes, flags):
    """A public client can neither choose the trace id nor switch sampling off."""
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{caller_trace}-{caller_span}-{flags}", "tracestate": "vendor=x"}
    async with running_chain(make_settings(), exporter) as client:
        r = await client.post("/finalize", files=upload(coffee_bytes), headers=headers)
    assert r.status_code == 200, r.text
    trace_id = r.json()["trace_id"]
    assert trace_id != caller_trace and r.headers["x-trace-id"] == trace_id
    traces = by_trace(exporter.get_finished_spans())
    assert caller_trace not in traces
    servers = assert_complete_chain(traces[trace_id])  # sampled and complete, whatever the flags said
    links = servers["postprocess"].links
    assert [(format(link.context.trace_id, "032x"), format(link.context.span_id, "016x")) for link in links] == [
        (caller_trace, caller_span)
    ]
    assert servers["postprocess"].parent is None


def _png(mode="RGB", size=(64, 64)):
    return image_bytes(Image.new(mode, size))


BAD_UPLOADS = [
    # (id, request kwargs, status, code, service that rejected it)
    ("no-body", {}, 422, "invalid_request", "postprocess"),
    ("wrong-field", {"files": {"image": ("a.jpg", b"x", "image/jpeg")}}, 422, "invalid_request", "postprocess"),
    (
        "not-multipart",
        {"content": b"\xff\xd8raw-jpeg", "headers": {"Content-Type": "image/jpeg"}},
        422,
        "invalid_request",
        "postprocess",
    ),
    ("empty-file", {"files": upload(b"")}, 400, "empty_file", "postprocess"),
    (
        "not-an-image",
        {"files": upload(b"%PDF-1.4 not an image", "doc.pdf", "application/pdf")},
        415,
        "unsupported_image_format",
        "preprocess",
    ),
    ("truncated", {"files": upload(COFFEE_JPG.read_bytes()[:20_000])}, 400, "corrupt_image", "preprocess"),
    (
        "16-bit",
        {"files": upload(image_bytes(Image.fromarray(np.zeros((32, 32), np.uint16))), "a.png", "image/png")},
        422,
        "unsupported_image_mode",
        "preprocess",
    ),
    (
        "too-many-pixels",
        {"files": upload(_png("1", (5000, 5000)), "big.png", "image/png")},
        413,
        "too_many_pixels",
        "preprocess",
    ),
    ("too-large-file", {"files": upload(COFFEE_JPG.read_bytes() * 3)}, 413, "payload_too_large", "postprocess"),
    ("body-too-large", {"files": upload(b"\xff" * 400_000)}, 413, "payload_too_large", "postprocess"),
]


@pytest.mark.parametrize("kwargs, status, code, origin", [b[1:] for b in BAD_UPLOADS], ids=[b[0] for b in BAD_UPLOADS])
async def test_bad_uploads_get_a_clear_4xx_through_the_chain(kwargs, status, code, origin):
    settings = make_settings(max_upload_bytes=200_000, max_image_pixels=20_000_000)
    async with running_chain(settings) as client:
        r = await client.post("/finalize", **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["code"], err["service"]) == (code, origin)
    assert err["message"] and err["trace_id"] == r.headers["x-trace-id"]


async def test_model_down_is_503(coffee_bytes):
    closed = f"http://127.0.0.1:{free_port()}"
    from preprocess.app import create_app

    app = create_app(make_settings(model_url=closed))
    async with app.router.lifespan_context(app):
        import httpx

        async with httpx.AsyncClient(transport=NetworkASGITransport(app=app), base_url="http://p") as client:
            r = await client.post("/process", files=upload(coffee_bytes))
            ready = await client.get("/ready")
            tensor = await client.post("/process?output=tensor", files=upload(coffee_bytes))
    assert r.status_code == 503 and r.json()["error"]["code"] == "downstream_unavailable"
    assert "model could not be reached" in r.json()["error"]["message"]
    assert ready.status_code == 503 and "model could not be reached" in ready.json()["error"]["message"]
    for answer in (r, ready):  # what happened, not where: no replica address, no exception class
        assert "127.0.0.1" not in answer.text and "ConnectError" not in answer.text
    assert tensor.status_code == 200  # standalone use needs no model


async def test_hung_model_is_504_not_a_hung_request(coffee_bytes):
    import httpx

    from postprocess.app import create_app as create_post
    from preprocess.app import create_app as create_pre

    async with never_answers() as model_url:
        settings = make_settings(model_url=model_url, model_timeout_s=0.5)
        pre = create_pre(settings)
        post = create_post(settings, preprocess_transport=NetworkASGITransport(app=pre))
        async with pre.router.lifespan_context(pre), post.router.lifespan_context(post):
            async with httpx.AsyncClient(transport=NetworkASGITransport(app=post), base_url="http://p") as client:
                r = await client.post("/finalize", files=upload(coffee_bytes))
    assert r.status_code == 504, r.text
    err = r.json()["error"]
    assert err["code"] == "downstream_timeout" and err["service"] == "preprocess" and "model" in err["message"]


async def test_errors_are_traced_with_the_trace_id_returned(exporter):
    async with running_chain(make_settings(), exporter) as client:
        r = await client.post("/finalize", files=upload(b"not an image"))
    trace_id = r.json()["error"]["trace_id"]
    spans = by_trace(exporter.get_finished_spans())[trace_id]
    pre_server = next(s for s in spans if service(s) == "preprocess" and s.kind == SpanKind.SERVER)
    assert (
        pre_server.attributes[
            "http.response.status_code" if "http.response.status_code" in pre_server.attributes else "http.status_code"
        ]
        == 415
    )
    # The client's bad upload is no error of ours on any span, the calling hop's CLIENT span included:
    # the tail sampler keeps every trace with an ERROR span, so junk uploads must not make one.
    assert [s.name for s in spans if s.status.status_code == StatusCode.ERROR] == []
    assert any(s.kind == SpanKind.CLIENT and s.attributes["http.response.status_code"] == 415 for s in spans)


async def test_collector_down_never_fails_a_request(coffee_bytes):
    collector = f"http://127.0.0.1:{free_port()}"  # nobody listens: every export fails
    async with running_chain(make_settings(otel_exporter_otlp_endpoint=collector)) as client:
        responses = [await client.post("/finalize", files=upload(coffee_bytes)) for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert all(r.json()["trace_id"] for r in responses)


async def test_tracing_disabled_still_serves(coffee_bytes):
    async with running_chain(make_settings(tracing_enabled=False)) as client:
        r = await client.post("/finalize", files=upload(coffee_bytes))
    assert r.status_code == 200 and r.json()["trace_id"] is None and "x-trace-id" not in r.headers


async def test_the_deadline_travels_hop_to_hop_and_late_work_is_skipped(coffee_bytes):
    """The client's X-Request-Timeout-Ms bounds the whole chain: each hop is told what is left,
    and a model asked after the deadline does not run inference."""
    import httpx

    from ml_pipeline.core import codec, wire
    from postprocess.app import create_app as create_post
    from preprocess.app import create_app as create_pre

    told = {}

    class Recording(NetworkASGITransport):
        def __init__(self, name, **kwargs):
            super().__init__(**kwargs)
            self.name = name

        async def handle_async_request(self, request):
            told[self.name] = int(request.headers[wire.REQUEST_TIMEOUT_HEADER])
            return await super().handle_async_request(request)

    def model(request: httpx.Request) -> httpx.Response:
        told["model"] = int(request.headers[wire.REQUEST_TIMEOUT_HEADER])
        return httpx.Response(
            200, content=codec.encode(np.zeros((1, 1000), np.float32)), headers={"Content-Type": wire.NPY_MEDIA_TYPE}
        )

    settings = make_settings()
    pre = create_pre(settings, model_transport=httpx.MockTransport(model))
    post = create_post(settings, preprocess_transport=Recording("preprocess", app=pre))
    async with pre.router.lifespan_context(pre), post.router.lifespan_context(post):
        async with httpx.AsyncClient(transport=NetworkASGITransport(app=post), base_url="http://p") as client:
            ok = await client.post(
                "/finalize", files=upload(coffee_bytes), headers={wire.REQUEST_TIMEOUT_HEADER: "3000"}
            )
            told_ok = dict(told)
            told.clear()
            late = await client.post(
                "/finalize", files=upload(coffee_bytes), headers={wire.REQUEST_TIMEOUT_HEADER: "1"}
            )
            told_late = dict(told)
            default = await client.post("/finalize", files=upload(coffee_bytes))
    assert ok.status_code == 200, ok.text
    assert 3000 >= told_ok["preprocess"] >= told_ok["model"] > 2000  # less at each hop, never more
    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
    assert "model" not in told_late  # the expired request never reached the model
    # Its deadline ran out in postprocess's hop: preprocess is not ejected for that, the next request is served.
    assert default.status_code == 200 and told["preprocess"] <= settings.request_timeout_s * 1000


async def test_postprocess_forwards_the_upload_as_the_body_itself_in_one_write(coffee_bytes):
    """The image itself as the body, in one socket write: no multipart written here and parsed
    in preprocess (httpx streams ``files=`` in pieces, each a write and a wake-up of preprocess's
    reader), and never the client's declared type (even a form's), which is not how to read it."""
    import httpx

    from model.app import create_app as create_model
    from postprocess.app import create_app as create_post
    from preprocess.app import create_app as create_pre

    seen = []

    class Chunks(NetworkASGITransport):
        async def handle_async_request(self, request):
            chunks = [chunk async for chunk in request.stream]
            seen.append((chunks, request.headers["content-type"]))
            request.stream = httpx.ByteStream(b"".join(chunks))
            return await super().handle_async_request(request)

    settings = make_settings()
    model = create_model(settings)
    pre = create_pre(settings, model_transport=NetworkASGITransport(app=model))
    post = create_post(settings, preprocess_transport=Chunks(app=pre))
    async with (
        model.router.lifespan_context(model),
        pre.router.lifespan_context(pre),
        post.router.lifespan_context(post),
    ):
        async with httpx.AsyncClient(transport=NetworkASGITransport(app=post), base_url="http://p") as client:
            answer = await client.post("/finalize", files=upload(coffee_bytes, content_type="multipart/form-data"))
    assert answer.status_code == 200, answer.text
    ((chunks, content_type),) = seen
    assert chunks == [coffee_bytes] and content_type == "application/octet-stream"


async def test_the_services_routes_come_before_the_documentations_which_still_answers():
    """The router tries routes in order: the service's own first, then FastAPI's documentation."""
    async with running_chain(make_settings()) as client:
        for name, app in client.apps.items():
            paths = [getattr(route, "path", None) for route in app.router.routes]
            docs = paths.index("/openapi.json")
            assert set(paths[docs:]) == {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}, (name, paths)
        assert (await client.get("/openapi.json")).json()["paths"].keys() >= {"/finalize", "/health"}
        assert (await client.get("/docs")).status_code == 200
