"""model service on its own (random backend): the binary contract and its errors."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ml_pipeline.core import codec, wire
from model.app import create_app
from support.apps import make_settings

NPY = {"Content-Type": wire.NPY_MEDIA_TYPE}


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(make_settings(max_batch=4))) as c:
        yield c


def tensor(n=1, seed=0, dtype=np.float32, shape=(3, 224, 224)):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(dtype)


def test_predict_answers_logits_as_npy(client):
    r = client.post("/predict", content=codec.encode(tensor(2)), headers=NPY)
    assert r.status_code == 200
    assert r.headers["content-type"] == wire.NPY_MEDIA_TYPE
    assert r.headers["x-model-backend"] == "random"
    logits = codec.decode(r.content)
    assert logits.shape == (2, 1000) and logits.dtype == np.float32
    assert "model.inference;dur=" in r.headers["server-timing"]


def test_random_backend_is_deterministic_per_sample(client):
    a, b = tensor(1, seed=1), tensor(1, seed=2)
    first = codec.decode(client.post("/predict", content=codec.encode(a), headers=NPY).content)
    again = codec.decode(client.post("/predict", content=codec.encode(a), headers=NPY).content)
    other = codec.decode(client.post("/predict", content=codec.encode(b), headers=NPY).content)
    batch = codec.decode(client.post("/predict", content=codec.encode(np.concatenate([b, a])), headers=NPY).content)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(batch[1], first[0])  # a sample's scores do not depend on its batch


def test_health_and_readiness(client):
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200 and "warmed up" in ready.json()["detail"]


def test_not_ready_before_the_model_is_loaded():
    app = create_app(make_settings())  # lifespan not started: nothing loaded
    r = TestClient(app).get("/ready")
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


@pytest.mark.parametrize(
    "body, headers, status, code, words",
    [
        (codec.encode(tensor()), {"Content-Type": "text/csv"}, 415, "unsupported_media_type", "application/x-npy"),
        (codec.encode(tensor()), {"Content-Type": "application/json"}, 400, "invalid_tensor", "JSON"),
        (codec.encode(tensor()), {}, 415, "unsupported_media_type", "no content type"),
        (b"", NPY, 400, "invalid_tensor", "not a .npy"),
        (b"garbage", NPY, 400, "invalid_tensor", "not a .npy"),
        (codec.encode(tensor())[:-10], NPY, 400, "invalid_tensor", "body has"),
        (codec.encode(tensor(shape=(3, 32, 32))), NPY, 400, "invalid_tensor", "[1, 3, 32, 32]"),
        (codec.encode(tensor()[0]), NPY, 400, "invalid_tensor", "is not [N,3,224,224]"),
        (codec.encode(tensor(dtype=np.float64)), NPY, 400, "invalid_tensor", "float64"),
        (codec.encode(tensor(0)), NPY, 400, "invalid_tensor", "batch size 0"),
        (codec.encode(np.full((1, 3, 224, 224), np.nan, np.float32)), NPY, 400, "invalid_tensor", "NaN"),
        (codec.encode(tensor(5)), NPY, 413, "payload_too_large", "exceeds the limit"),
    ],
    ids=[
        "csv-type",
        "npy-as-json",
        "no-type",
        "empty",
        "garbage",
        "truncated",
        "small-image",
        "3d",
        "float64",
        "batch0",
        "nan",
        "batch-over-max",
    ],
)
def test_bad_tensors_get_the_envelope(client, body, headers, status, code, words):
    r = client.post("/predict", content=body, headers=headers)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["service"] == "model" and words in err["message"]
    assert err["trace_id"] == r.headers["x-trace-id"]


def test_chunked_body_over_the_limit_is_413(client):
    chunk = b"\0" * (1 << 20)
    r = client.post("/predict", content=iter([chunk] * 16), headers=NPY)  # no Content-Length
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_unknown_route_and_method_use_the_envelope(client):
    assert client.get("/nope").json()["error"]["code"] == "not_found"
    r = client.get("/predict")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_openapi_documents_the_binary_body(client):
    spec = client.get("/openapi.json").json()
    assert wire.NPY_MEDIA_TYPE in spec["paths"]["/predict"]["post"]["requestBody"]["content"]


def test_startup_objects_are_frozen_out_of_the_garbage_collector():
    """After startup, a full collection no longer walks the process's long-lived objects (~50 ms of
    stalled event loop each time otherwise). A fresh process: freezing is process-wide."""
    import subprocess
    import sys

    probe = """
import gc, sys
sys.path.insert(0, "tests")
from fastapi.testclient import TestClient
from support.apps import make_settings
from model.app import create_app
app = create_app(make_settings())
before = gc.get_freeze_count()
with TestClient(app) as client:
    assert client.get("/ready").status_code == 200
    print(before, gc.get_freeze_count(), gc.is_tracked(app) and app in gc.get_objects(generation=2))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    before, frozen, app_still_collected = out.stdout.split()
    assert before == "0" and int(frozen) > 10_000, out.stdout
    assert app_still_collected == "False"
