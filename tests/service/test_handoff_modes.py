"""All three hand-off modes through the in-process services: identical answers, the setting and
the per-request choice, and nothing left on the volume whatever happens."""

import os
import time

import httpx
import numpy as np
import pytest

from ml_pipeline.core import codec, handoff, wire
from support.apps import NetworkASGITransport, free_port, make_settings, running_chain
from support.data import CHELSEA_JPG, COFFEE_JPG

ALL_MODES = tuple(wire.HandoffMode)  # /predict three ways, the Open Inference Protocol two


def tensor(seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["random", "onnx"])
async def test_every_transport_gives_identical_answers_and_leaves_nothing(tmp_path, exporter, backend):
    settings = make_settings(
        model_backend=backend,
        model_v2_name={"random": "random-1000", "onnx": "efficientnet-lite0"}[backend],
        shared_data_dir=tmp_path,
        allow_transport_override=True,
        grpc_port=(port := free_port()),
        model_grpc_target=f"127.0.0.1:{port}",
    )
    answers = {}
    async with running_chain(settings, exporter) as client:
        pre = httpx.AsyncClient(
            transport=NetworkASGITransport(app=client.apps["preprocess"]), base_url="http://preprocess.test"
        )
        for mode in ALL_MODES:
            for photo in (COFFEE_JPG, CHELSEA_JPG):
                r = await pre.post(
                    "/process", params={"transport": mode}, files={"file": ("p.jpg", photo.read_bytes(), "image/jpeg")}
                )
                assert r.status_code == 200 and r.headers["x-tensor-transport"] == mode, r.text
                answers[mode, photo.name] = codec.decode(r.content)
        await pre.aclose()
        final = (
            await client.post("/finalize", files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})
        ).json()
    for photo in (COFFEE_JPG, CHELSEA_JPG):
        np.testing.assert_array_equal(answers["json", photo.name], answers["http", photo.name])
        np.testing.assert_array_equal(answers["volume", photo.name], answers["http", photo.name])
        np.testing.assert_array_equal(answers["v2-http", photo.name], answers["http", photo.name])
        np.testing.assert_array_equal(answers["v2-grpc", photo.name], answers["http", photo.name])
    assert final["transport"] == "http"  # the TRANSPORT default
    assert os.listdir(tmp_path) == []
    handoff_spans = {
        s.attributes["ml_pipeline.handoff.transport"]: s for s in exporter.get_finished_spans() if s.name == "handoff"
    }
    assert set(handoff_spans) == set(ALL_MODES)
    assert handoff_spans["volume"].attributes["ml_pipeline.handoff.file.write_ms"] > 0
    assert (
        handoff_spans["volume"].attributes["ml_pipeline.tensor.bytes"]
        == handoff_spans["http"].attributes["ml_pipeline.tensor.bytes"]
    )
    assert handoff_spans["volume"].attributes["ml_pipeline.handoff.body.bytes"] < 100
    assert (
        handoff_spans["json"].attributes["ml_pipeline.tensor.bytes"]
        > 2 * handoff_spans["http"].attributes["ml_pipeline.tensor.bytes"]
    )
    reads = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "tensor_decode" and s.attributes["ml_pipeline.handoff.transport"] == "volume"
    ]
    assert reads and reads[0].attributes["ml_pipeline.handoff.file.read_ms"] >= 0


@pytest.mark.anyio
async def test_transport_setting_chooses_the_default_and_bad_values_are_422(tmp_path):
    async with running_chain(make_settings(transport="volume", shared_data_dir=tmp_path)) as client:
        answer = (
            await client.post("/finalize", files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})
        ).json()
        pre = httpx.AsyncClient(
            transport=NetworkASGITransport(app=client.apps["preprocess"]), base_url="http://preprocess.test"
        )
        bad = await pre.post(
            "/process", params={"transport": "carrier-pigeon"}, files={"file": ("c.jpg", b"x", "image/jpeg")}
        )
        await pre.aclose()
    assert answer["transport"] == "volume" and answer["class_id"] >= 0
    assert bad.status_code == 422 and "transport" in bad.json()["error"]["message"]
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
async def test_choosing_the_transport_per_request_is_off_unless_allowed(tmp_path):
    async with running_chain(make_settings(shared_data_dir=tmp_path)) as client:
        pre = httpx.AsyncClient(
            transport=NetworkASGITransport(app=client.apps["preprocess"]), base_url="http://preprocess.test"
        )
        refused = await pre.post(
            "/process", params={"transport": "volume"}, files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")}
        )
        plain = await pre.post("/process", files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})
        await pre.aclose()
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "transport_override_disabled"
    assert plain.status_code == 200 and plain.headers["x-tensor-transport"] == "http"


@pytest.mark.anyio
async def test_a_model_that_dies_mid_request_leaves_no_file(tmp_path):
    """The model reads nothing and the connection breaks: preprocess (the writer) still deletes;
    and a file a crashed writer left behind goes with the sweep."""
    from preprocess.app import create_app

    def crash(request):
        assert len(os.listdir(tmp_path)) == 1  # the file was written before the model was called
        raise httpx.RemoteProtocolError("model died", request=request)

    settings = make_settings(transport="volume", shared_data_dir=tmp_path, model_max_attempts=2)
    app = create_app(settings, model_transport=httpx.MockTransport(crash))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p.test") as c,
    ):
        r = await c.post("/process", files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})
    assert r.status_code == 503 and r.json()["error"]["code"] == "downstream_unavailable"
    assert os.listdir(tmp_path) == []

    orphan, _ = handoff.write_tensor(tmp_path, tensor())  # as if preprocess itself had crashed
    long_ago = time.time() - 3600
    os.utime(tmp_path / orphan, (long_ago, long_ago))
    assert handoff.sweep(tmp_path, settings.handoff_file_ttl_s) == 1 and os.listdir(tmp_path) == []


def test_model_refuses_bad_references_with_400(tmp_path):
    from fastapi.testclient import TestClient

    from model.app import create_app

    (tmp_path / f"{'c' * 32}.npy").write_bytes(codec.encode(tensor().astype(np.float64)))
    with TestClient(create_app(make_settings(shared_data_dir=tmp_path))) as client:
        for body, code in [
            (handoff.encode_reference("../etc/passwd"), "invalid_reference"),
            (handoff.encode_reference(f"{'d' * 32}.npy"), "invalid_reference"),
            (handoff.encode_reference(f"{'c' * 32}.npy"), "invalid_tensor"),
        ]:
            r = client.post("/predict", content=body, headers={"Content-Type": wire.TENSOR_REFERENCE_MEDIA_TYPE})
            assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
