"""The model's own body limit on ``/predict``, apart from the app-wide one.

The app-wide middleware limit leaves room for the verbose JSON hand-off (~24 characters a float),
so it is several times larger than any binary tensor the model accepts; binary bodies get a limit
of their own (``max_batch`` tensors plus the ``.npy`` header), checked by the route. With
``max_batch=1``: the route's limit is ~0.6 MB, the middleware's ~3.6 MB; every body here lies
between the two, so only the route can refuse it."""

from __future__ import annotations

import contextlib

import httpx
import numpy as np
import pytest

from ml_pipeline.core import codec, handoff, wire
from model.app import create_app
from model.dataplane import REFERENCE_MAX_BYTES
from support.apps import make_settings

pytestmark = pytest.mark.anyio

FLOATS = 3 * 224 * 224
TENSOR_LIMIT = 1 * FLOATS * 4 + 4096  # the route's limit for binary bodies at max_batch=1
APP_LIMIT = 1 * FLOATS * 24 + 4096  # the middleware's, sized for JSON
NPY = {"Content-Type": wire.NPY_MEDIA_TYPE}


@contextlib.asynccontextmanager
async def model_client():
    app = create_app(make_settings(max_batch=1))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model.test") as client:
            yield client


def batch(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, 3, 224, 224)).astype(np.float32)


def assert_refused_by_the_route(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert (err["code"], err["service"]) == ("payload_too_large", "model")
    assert err["message"].endswith(f"exceeds the limit of {TENSOR_LIMIT} bytes")  # the route's, not the app's


async def test_a_binary_body_declared_over_the_tensor_limit_is_refused_from_its_content_length():
    """Judged by the header before reading: the body actually sent is a valid one-image tensor,
    which would be answered had the route read it first."""
    body = codec.encode(batch(1))
    declared = TENSOR_LIMIT + 100_000
    assert len(body) <= TENSOR_LIMIT < declared < APP_LIMIT
    async with model_client() as client:
        r = await client.post("/predict", content=body, headers={**NPY, "Content-Length": str(declared)})
        honest = await client.post("/predict", content=body, headers=NPY)
    assert_refused_by_the_route(r)
    assert f"request body of {declared} bytes" in r.json()["error"]["message"]
    assert honest.status_code == 200  # the same bytes with their true length pass


async def test_a_binary_body_without_content_length_is_refused_once_read_past_the_tensor_limit():
    """Chunked, so only the bytes tell: a two-image tensor (1.2 MB) passes the middleware and must
    be refused by size, not reach the decoder (whose batch-size check would say 400)."""
    body = codec.encode(batch(2))
    assert TENSOR_LIMIT < len(body) < APP_LIMIT

    async def chunks():
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    async with model_client() as client:
        r = await client.post("/predict", content=chunks(), headers=NPY)
    assert "content-length" not in r.request.headers
    assert_refused_by_the_route(r)
    assert f"request body of {len(body)} bytes" in r.json()["error"]["message"]


async def test_a_reference_body_gets_a_limit_of_its_own_size():
    """A file reference is a name: a kilobyte of it is refused before json.loads sees it."""
    async with model_client() as client:
        r = await client.post(
            "/predict",
            content=b" " * (REFERENCE_MAX_BYTES + 1),
            headers={"Content-Type": wire.TENSOR_REFERENCE_MEDIA_TYPE},
        )
    assert r.status_code == 413, r.text
    assert f"limit of {REFERENCE_MAX_BYTES} bytes" in r.json()["error"]["message"]


async def test_a_json_body_larger_than_the_tensor_limit_is_still_accepted():
    """The JSON baseline spends several bytes per float: its bodies get the app-wide limit."""
    body = handoff.encode_json(np.zeros((1, 3, 224, 224), np.float32))
    assert TENSOR_LIMIT < len(body) < APP_LIMIT
    async with model_client() as client:
        r = await client.post("/predict", content=body, headers={"Content-Type": wire.JSON_TENSOR_MEDIA_TYPE})
    assert r.status_code == 200, r.text
    assert codec.decode(r.content).shape == (1, 1000)
