"""Guarantees held by behaviour, not by message wording (issue 31), in-process: the header pixel
limit for JPEGs (decoded at a reduced DCT scale, so the check after decoding never sees their
size), infinite values refused wherever a tensor enters the model, and a ``binary_data_size``
that runs past the body refused on the server and the client side alike."""

import contextlib
import io
import json

import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as tritongrpc
from PIL import Image
from tritonclient.utils import InferenceServerException

from ml_pipeline.core import codec, handoff, open_inference, wire
from ml_pipeline.core.errors import BadRequest
from support.apps import make_settings
from support.triton import grpc_input

pytestmark = pytest.mark.anyio
MODEL = "random-1000"
INFER = f"/v2/models/{MODEL}/infer"
NPY = {"Content-Type": wire.NPY_MEDIA_TYPE}


# --------------------------------------------------------------------------- the JPEG pixel limit


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 200)).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


@contextlib.asynccontextmanager
async def preprocess(**settings):
    from preprocess.app import create_app

    app = create_app(make_settings(**settings))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://preprocess.test") as c:
            yield c


async def test_a_jpeg_over_the_pixel_limit_is_413_though_it_would_decode_small():
    """4000x3000 = 12 MP against MAX_IMAGE_PIXELS=10 MP: only the header check can refuse it, for a
    JPEG is decoded at 1/8 scale (500x375) and passes the decoded-size check. The same JPEG under a
    limit it fits is answered: the 413 is the header check's, not any other."""
    data = jpeg(4000, 3000)
    files = {"file": ("photo.jpg", data, "image/jpeg")}
    async with preprocess(max_image_pixels=10_000_000, max_full_decode_pixels=1_000_000) as client:
        refused = await client.post("/process?output=tensor", files=files)
    async with preprocess(max_image_pixels=12_000_000, max_full_decode_pixels=1_000_000) as client:
        fits = await client.post("/process?output=tensor", files=files)
    assert refused.status_code == 413, refused.text
    assert (refused.json()["error"]["code"], refused.json()["error"]["service"]) == ("too_many_pixels", "preprocess")
    assert fits.status_code == 200, fits.text  # decoded at a reduced scale, well under 1 MP
    assert codec.decode(fits.content).shape == (1, 3, 224, 224)


# --------------------------------------------------------------------------- infinite values


@contextlib.asynccontextmanager
async def model(**settings):
    from model.app import create_app

    app = create_app(make_settings(**settings))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model.test") as c:
            yield app, c


NON_FINITE = pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])


def poisoned(value: float) -> np.ndarray:
    """An otherwise valid batch with one non-finite value, deep inside (not the first element)."""
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    x[1, 2, 100, 57] = value
    return x


@NON_FINITE
async def test_non_finite_tensors_are_refused_on_predict_in_every_encoding(value):
    x = poisoned(value)
    async with model() as (_, client):
        npy = await client.post("/predict", content=codec.encode(x), headers=NPY)
        as_json = await client.post(
            "/predict", content=handoff.encode_json(x), headers={"Content-Type": wire.JSON_TENSOR_MEDIA_TYPE}
        )
        clean = await client.post("/predict", content=codec.encode(np.nan_to_num(x)), headers=NPY)
    for r in (npy, as_json):
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_tensor", r.text
    assert clean.status_code == 200  # the same batch without it is answered


@NON_FINITE
async def test_non_finite_tensors_are_refused_on_v2_rest_binary_and_json(value):
    x = poisoned(value)
    binary, length = open_inference.encode_request({"input": x}, [])
    async with model() as (_, client):
        r_binary = await client.post(INFER, content=binary, headers={wire.INFERENCE_HEADER_LENGTH_HEADER: str(length)})
        # JSON: Python's json reads Infinity/NaN, and a number past float32 (1e39) is infinite as FP32
        text = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": list(x.shape),
                        "data": np.nan_to_num(x).ravel().tolist(),
                    }
                ]
            }
        )
        literal = "NaN" if np.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        r_literal = await client.post(INFER, content=_replace_first_value(text, literal))
        overflow = "NaN" if np.isnan(value) else ("1e39" if value > 0 else "-1e39")
        r_overflow = await client.post(INFER, content=_replace_first_value(text, overflow))
        clean = await client.post(INFER, content=text)
    for r in (r_binary, r_literal, r_overflow):
        assert r.status_code == 400 and set(r.json()) == {"error"}, r.text
    assert clean.status_code == 200


def _replace_first_value(text: str, literal: str) -> str:
    """``text`` with the first element of its ``data`` list replaced by ``literal``."""
    head, tail = text.split('"data": [', 1)
    return head + '"data": [' + literal + tail[tail.index(",") :]


@NON_FINITE
async def test_non_finite_tensors_are_refused_on_v2_grpc_raw_and_typed(value):
    x = poisoned(value)[1:]  # the image holding the value
    async with model() as (app, _):
        client = tritongrpc.InferenceServerClient(f"127.0.0.1:{app.state.grpc_port}")
        try:
            with pytest.raises(InferenceServerException) as raw:
                await client.infer(MODEL, [grpc_input(x)])
            answered = await client.infer(MODEL, [grpc_input(np.nan_to_num(x))])
        finally:
            await client.close()
        typed = _typed_request(x)
        from grpc import aio

        async with aio.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
            call = channel.unary_unary(f"/{_grpc_service()}/ModelInfer")
            with pytest.raises(aio.AioRpcError) as typed_error:
                await call(typed.SerializeToString(), timeout=30)
    assert raw.value.status() == "StatusCode.INVALID_ARGUMENT", raw.value.message()
    assert typed_error.value.code().name == "INVALID_ARGUMENT", typed_error.value.details()
    assert answered.as_numpy("logits").shape == (1, 1000)


def random_bytes_as_fp32() -> np.ndarray:
    """What perf_analyzer's default ``--input-data random`` sends for an FP32 input: random bytes,
    so about one value in 128 is NaN or infinite (exponent all ones), and the first one is at [0, 0, 0, 7]."""
    x = np.frombuffer(np.random.default_rng(29).bytes(4 * 3 * 224 * 224), "<f4").reshape(1, 3, 224, 224).copy()
    x[np.isnan(x) | np.isinf(x)] = 0.5
    x[0, 0, 0, 7], x[0, 2, 200, 3] = np.nan, -np.inf
    return x


async def test_random_bytes_are_refused_with_the_reason_over_both_protocols():
    """Issue 29: the protocol's error says which input, how many values, where the first is, and
    what the model takes, so perf_analyzer prints the reason (it shows the server's message)."""
    x = random_bytes_as_fp32()
    async with model() as (app, client):
        body, length = open_inference.encode_request({"input": x}, [])
        rest = await client.post(INFER, content=body, headers={wire.INFERENCE_HEADER_LENGTH_HEADER: str(length)})
        predict = await client.post("/predict", content=codec.encode(x), headers=NPY)
        grpc_client = tritongrpc.InferenceServerClient(f"127.0.0.1:{app.state.grpc_port}")
        try:
            with pytest.raises(InferenceServerException) as over_grpc:
                await grpc_client.infer(MODEL, [grpc_input(x)])
        finally:
            await grpc_client.close()
    assert rest.status_code == 400 and set(rest.json()) == {"error"}, rest.text
    reason = "input 'input' holds 2 NaN or infinite values of 150528 (the first at [0, 0, 0, 7])"
    assert reason in rest.json()["error"] and "finite" in rest.json()["error"].split(")", 1)[1]
    assert over_grpc.value.status() == "StatusCode.INVALID_ARGUMENT" and reason in over_grpc.value.message()
    assert predict.status_code == 400 and predict.json()["error"]["code"] == "invalid_tensor"
    assert "holds 2 NaN or infinite values of 150528 (the first at [0, 0, 0, 7])" in predict.json()["error"]["message"]


def _grpc_service() -> str:
    from ml_pipeline.core import open_inference_grpc

    return open_inference_grpc.SERVICE


def _typed_request(x: np.ndarray):
    from ml_pipeline.core import open_inference_grpc

    request = open_inference_grpc.messages["ModelInferRequest"](model_name=MODEL)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    return request


# --------------------------------------------------------------------------- binary_data_size past the end


def past_the_end(kind: str, declared: int = 16) -> tuple[bytes, str]:
    """A body whose one tensor declares ``declared`` bytes where 12 are there, with a shape ([3]
    FP32) that those 12 bytes fit: only a check of the declared sizes against the body refuses it."""
    header = json.dumps(
        {
            **({"model_name": MODEL} if kind == "outputs" else {}),
            kind: [{"name": "x", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": declared}}],
        }
    ).encode()
    return header + np.arange(3, dtype="<f4").tobytes(), str(len(header))


@pytest.mark.parametrize("kind", ["inputs", "outputs"])
def test_a_binary_data_size_past_the_end_is_refused_by_request_and_response_decoding(kind):
    body, length = past_the_end(kind)
    decode = open_inference.decode_request if kind == "inputs" else open_inference.decode_response
    with pytest.raises(BadRequest) as refused:
        decode(body, length, max_elements=1000)
    assert (refused.value.status, refused.value.code) == (400, open_inference.CODE)


@pytest.mark.parametrize("kind", ["inputs", "outputs"])
def test_a_binary_section_longer_than_declared_is_refused_both_ways(kind):
    body, length = past_the_end(kind, declared=12)
    body += b"\0" * 4  # 16 bytes there, 12 declared and used: 4 belong to no tensor
    decode = open_inference.decode_request if kind == "inputs" else open_inference.decode_response
    with pytest.raises(BadRequest) as refused:
        decode(body, length, max_elements=1000)
    assert refused.value.code == open_inference.CODE


async def test_a_binary_data_size_past_the_end_is_a_400_from_the_route():
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 3, 224, 224],
                    "parameters": {"binary_data_size": 4 * 3 * 224 * 224 + 4},  # 4 more than are there
                }
            ]
        }
    ).encode()
    body = header + np.zeros((1, 3, 224, 224), "<f4").tobytes()
    async with model() as (_, client):
        r = await client.post(INFER, content=body, headers={wire.INFERENCE_HEADER_LENGTH_HEADER: str(len(header))})
    assert r.status_code == 400 and set(r.json()) == {"error"}, r.text
