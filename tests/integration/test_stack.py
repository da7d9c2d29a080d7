"""The deployed compose stack, over real HTTP between real containers."""

import concurrent.futures
import re

import httpx
import numpy as np
import pytest

from ml_pipeline.core import codec, wire
from preprocess import imaging
from support.data import COFFEE_JPG, ESPRESSO

pytestmark = pytest.mark.integration


def finalize(client: httpx.Client, data: bytes, name="test.jpg") -> httpx.Response:
    return client.post("/finalize", files={"file": (name, data, "image/jpeg")})


def test_every_service_is_alive_and_ready(stack):
    for name, url in stack.items():
        health = httpx.get(f"{url}/health", timeout=5)
        # The edge passes /health through: what answers behind it is postprocess.
        assert health.status_code == 200 and health.json()["service"] == ("postprocess" if name == "edge" else name)
        assert httpx.get(f"{url}/ready", timeout=5).status_code == 200, name


def test_test_jpg_is_espresso_with_its_trace_id(client):
    r = finalize(client, COFFEE_JPG.read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["class_id"], body["label"], body["backend"]) == (ESPRESSO, "espresso", "onnx")
    assert body["score"] == pytest.approx(0.96, abs=0.03)
    assert re.fullmatch(r"[0-9a-f]{32}", body["trace_id"]) and body["trace_id"] != "0" * 32
    assert r.headers["x-trace-id"] == body["trace_id"]
    assert "model.inference;dur=" in r.headers["server-timing"]


def test_keepalive_requests_get_separate_traces(client):
    trace_ids = [finalize(client, COFFEE_JPG.read_bytes()).json()["trace_id"] for _ in range(5)]
    assert len(set(trace_ids)) == 5


def test_concurrent_requests_all_succeed(stack):
    photo = COFFEE_JPG.read_bytes()
    with httpx.Client(base_url=stack["postprocess"], timeout=60) as c, concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: finalize(c, photo), range(24)))
    assert [r.status_code for r in results] == [200] * 24
    assert {r.json()["class_id"] for r in results} == {ESPRESSO}
    assert len({r.json()["trace_id"] for r in results}) == 24


def test_preprocess_returns_the_tensor_standalone(stack):
    data = COFFEE_JPG.read_bytes()
    r = httpx.post(
        f"{stack['preprocess']}/process", params={"output": "tensor"}, files={"file": ("t.jpg", data)}, timeout=30
    )
    assert r.status_code == 200 and r.headers["content-type"] == wire.NPY_MEDIA_TYPE
    tensor = codec.decode(r.content)
    assert tensor.shape == (1, 3, 224, 224) and tensor.dtype == np.float32
    np.testing.assert_array_equal(tensor, imaging.normalize(imaging.resize_crop(imaging.decode(data, 10**9))))


def test_bad_input_through_the_stack(client):
    not_image = finalize(client, b"definitely not a picture", "notes.txt")
    assert not_image.status_code == 415
    assert not_image.json()["error"]["service"] == "preprocess"
    assert not_image.json()["error"]["trace_id"] == not_image.headers["x-trace-id"]
    too_big = finalize(client, b"\xff" * (11 * 1024 * 1024))
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"
    missing = client.post("/finalize")
    assert missing.status_code == 422 and "file" in missing.json()["error"]["message"]


def test_model_speaks_npy(stack):
    x = np.zeros((1, 3, 224, 224), np.float32)
    r = httpx.post(
        f"{stack['model']}/predict", content=codec.encode(x), headers={"Content-Type": wire.NPY_MEDIA_TYPE}, timeout=30
    )
    assert r.status_code == 200 and codec.decode(r.content).shape == (1, 1000)
    bad = httpx.post(f"{stack['model']}/predict", content=b"1,2,3", headers={"Content-Type": "text/csv"}, timeout=30)
    assert bad.status_code == 415 and bad.json()["error"]["service"] == "model"
    naive = httpx.post(
        f"{stack['model']}/predict", content=b"[1, 2, 3]", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert naive.status_code == 400 and naive.json()["error"]["code"] == "invalid_tensor"
