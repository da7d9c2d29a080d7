"""The model's Open Inference Protocol routes in-process: what each answers, the protocol's error
format under /v2 (and only there), health as 200/400, versioned routes, and the traced stages."""

import contextlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from ml_pipeline.core import codec, open_inference, wire
from model.app import create_app
from support.apps import make_settings

pytestmark = pytest.mark.anyio
MODEL = "random-1000"  # the random backend's name


@contextlib.asynccontextmanager
async def model_client(exporter=None, **settings):
    app = create_app(make_settings(**settings), span_exporter=exporter)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model.test") as client:
            yield client


def batch(n=1):
    return np.random.default_rng(3).uniform(-1, 1, (n, 3, 224, 224)).astype(np.float32)


async def test_server_and_model_metadata_config_and_health():
    async with model_client(max_batch=4) as client:
        server = (await client.get("/v2")).json()
        assert server["name"] == "ml-pipeline-model" and "binary_tensor_data" in server["extensions"]
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}
        for prefix in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/1"):
            meta = (await client.get(prefix)).json()
            assert meta["name"] == MODEL and meta["versions"] == ["1"]
            assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
            assert (await client.get(f"{prefix}/ready")).json() == {"name": MODEL, "ready": True}
            config = (await client.get(f"{prefix}/config")).json()
            assert config["max_batch_size"] == 4 and config["output"][0] == {
                "name": "logits",
                "data_type": "TYPE_FP32",
                "dims": [1000],
            }


def test_readiness_is_400_with_the_protocols_error_until_the_model_is_loaded():
    client = TestClient(create_app(make_settings()))  # lifespan not started: nothing loaded
    for path in ("/v2/health/ready", f"/v2/models/{MODEL}/ready"):
        r = client.get(path)
        assert r.status_code == 400 and set(r.json()) == {"error"} and "loading" in r.json()["error"]
    assert client.get("/v2/health/live").status_code == 200


@pytest.mark.parametrize("binary", [True, False])
async def test_infer_answers_the_same_logits_as_predict(binary, exporter):
    x = batch(2)
    body, length = open_inference.encode_request(
        {"input": x}, [open_inference.RequestedOutput("logits", binary)], binary=binary
    )
    headers = {wire.INFERENCE_HEADER_LENGTH_HEADER: str(length)} if length is not None else {}
    async with model_client(exporter) as client:
        r = await client.post(f"/v2/models/{MODEL}/versions/1/infer", content=body, headers=headers)
        predicted = await client.post(
            "/predict", content=codec.encode(x), headers={"Content-Type": wire.NPY_MEDIA_TYPE}
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ("application/octet-stream" if binary else "application/json")
    assert r.headers[wire.MODEL_NAME_HEADER.lower()] == MODEL and "model.inference;dur=" in r.headers["server-timing"]
    outputs = open_inference.decode_response(
        r.content, r.headers.get(wire.INFERENCE_HEADER_LENGTH_HEADER), max_elements=10**6
    ).outputs
    np.testing.assert_array_equal(outputs["logits"], codec.decode(predicted.content))
    decode = [s for s in exporter.get_finished_spans() if s.name == "tensor_decode"]
    assert decode[0].attributes["ml_pipeline.handoff.transport"] == "v2-http"


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        (f"/v2/models/{MODEL}/infer", b"{}", 400, "inputs must be a non-empty list"),
        ("/v2/models/nope/infer", b"{}", 404, "unknown model 'nope'"),
        (f"/v2/models/{MODEL}/versions/7/infer", b"{}", 404, "no version '7'"),
        ("/v2/models/nope", None, 404, "unknown model"),
        ("/v2/nothing-here", None, 404, "Not Found"),
    ],
)
async def test_errors_under_v2_are_the_protocols_and_only_there(path, body, status, words):
    async with model_client() as client:
        r = await (client.post(path, content=body) if body is not None else client.get(path))
        ours = await client.post("/predict", content=b"{}", headers={"Content-Type": "text/csv"})
    assert r.status_code == status and set(r.json()) == {"error"} and words in r.json()["error"], r.text
    assert r.headers.get("x-trace-id")
    assert (
        ours.status_code == 415 and ours.json()["error"]["code"] == "unsupported_media_type"
    )  # the envelope elsewhere


async def test_a_batch_larger_than_max_batch_is_a_400():
    body, length = open_inference.encode_request({"input": batch(3)}, [])
    async with model_client(max_batch=2) as client:
        r = await client.post(
            f"/v2/models/{MODEL}/infer", content=body, headers={wire.INFERENCE_HEADER_LENGTH_HEADER: str(length)}
        )
    assert r.status_code == 400 and "holds 451584 elements, more than the 301056 allowed" in r.json()["error"]
