"""The model against hostile bodies, in-process (issue 28): JSON tensors counted before they are
parsed (a body of empty lists is refused in milliseconds, without building them, while /health
answers), huge-times-zero shapes, non-ASCII digits and undecodable protobuf refused as 400 /
INVALID_ARGUMENT, non-finite outputs written as JSON that parses, and messages that say what was
wrong with the input, never which exception raised."""

import asyncio
import contextlib
import json
import math
import time
import tracemalloc

import grpc
import httpx
import numpy as np
import pytest
from grpc import aio

from ml_pipeline.core import codec, handoff, open_inference, wire
from ml_pipeline.core import open_inference_grpc as grpc_codec
from model.app import create_app
from support.apps import make_settings

pytestmark = pytest.mark.anyio
MODEL = "random-1000"
INFER = f"/v2/models/{MODEL}/infer"
NPY = {"Content-Type": wire.NPY_MEDIA_TYPE}
JSON_TENSOR = {"Content-Type": wire.JSON_TENSOR_MEDIA_TYPE}
LEAKS = ("Error", "Exception", "<", "0x", "Traceback", "sys.")  # class names, reprs, heap addresses


@contextlib.asynccontextmanager
async def model(**settings):
    """The model app (lifespan started, gRPC on a free port) and an HTTP client for it."""
    app = create_app(make_settings(**settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500 is an answer here
        async with httpx.AsyncClient(transport=transport, base_url="http://model.test", timeout=60) as client:
            yield app, client


def batch(n=1):
    return np.random.default_rng(11).uniform(-1, 1, (n, 3, 224, 224)).astype(np.float32)


def empty_lists_body(limit: int, *, v2: bool) -> bytes:
    """The issue's body: ``"data": [[],[],…]`` up to ``limit`` bytes, a declared shape that fits."""
    head = (
        b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,3,224,224],"data":['
        if v2
        else b'{"shape":[1,3,224,224],"dtype":"float32","data":['
    )
    tail = b"[]]}]}" if v2 else b"[]]}"
    body = head + b"[]," * ((limit - len(head) - len(tail)) // 3) + tail
    assert len(body) <= limit
    return body


# --------------------------------------------------------------------------- JSON tensors, bounded


@pytest.mark.parametrize("route", ["v2", "predict"])
async def test_a_body_of_empty_lists_is_refused_at_once_without_building_them_while_health_answers(route):
    """57.8 MB of ``[],`` (the JSON limit at MAX_BATCH=16) took 13-17 s holding the GIL and ~2 GB:
    now a 400 in well under a second, allocating little beyond the body, and /health is not held up."""
    async with model() as (app, client):
        limit = app.state.predictor.max_body_bytes  # the app-wide limit: the JSON one
        body = empty_lists_body(limit, v2=route == "v2")
        assert len(body) > 57_000_000

        async def hostile() -> httpx.Response:
            if route == "v2":
                return await client.post(INFER, content=body)
            return await client.post("/predict", content=body, headers=JSON_TENSOR)

        async def health_while(request: asyncio.Task) -> list[float]:
            """/health every 10 ms while ``request`` runs (and once more): the time between answers,
            which a blocked event loop stretches (the wait between probes included)."""
            gaps, last = [], time.perf_counter()
            while not gaps or not request.done():
                assert (await client.get("/health")).status_code == 200
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
                await asyncio.sleep(0.01)
            return gaps

        tracemalloc.start()
        try:
            start = time.perf_counter()
            request = asyncio.ensure_future(hostile())
            gaps = await health_while(request)
            r = await request
            took = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        health_s = max(gaps)
    assert r.status_code == 400, r.text[:300]
    assert took < 1.0 and health_s < 0.5, (took, health_s, len(gaps))
    # ~19 million empty lists were ~1.9 GB of Python objects; a copy of the body at most is all now.
    assert peak < 2 * len(body) + 32_000_000, peak
    message = r.json()["error"] if route == "v2" else r.json()["error"]["message"]
    assert route == "v2" or r.json()["error"]["code"] == "invalid_tensor"
    assert "refused before parsing" in message


def nested_v2_request(x: np.ndarray) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]}
    ).encode()


async def test_the_largest_json_batch_still_fits_the_budget_nested_or_flat():
    """The budget is the largest batch written as nested lists (and the JSON limit its text): a full
    batch passes both ways, on /predict and v2 alike; one list more than it can hold is refused."""
    x = batch(2)
    flat = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 224, 224], "data": x.ravel().tolist()}]}
    ).encode()
    async with model(max_batch=2) as (app, client):
        budget = app.state.predictor.json_budget
        assert budget.lists == 1 + 2 * (1 + 3 + 3 * 224) + codec.JSON_SLACK
        nested = await client.post(INFER, content=nested_v2_request(x))
        flat_r = await client.post(INFER, content=flat)
        predict = await client.post("/predict", content=handoff.encode_json(x), headers=JSON_TENSOR)
        binary = await client.post("/predict", content=codec.encode(x), headers=NPY)
        over = json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [[]] * budget.lists}]}
        )
        refused = await client.post(INFER, content=over)
    assert nested.status_code == flat_r.status_code == predict.status_code == 200, (nested.text, flat_r.text)
    logits = codec.decode(binary.content)
    for answer in (nested, flat_r):
        np.testing.assert_array_equal(
            np.asarray(answer.json()["outputs"][0]["data"], np.float32).reshape(2, 1000), logits
        )
    np.testing.assert_array_equal(codec.decode(predict.content), logits)
    assert refused.status_code == 400 and "more lists" in refused.json()["error"]


async def test_json_beside_a_binary_section_is_bounded_too():
    """``Inference-Header-Content-Length`` covering the whole body: the JSON part is counted alike."""
    async with model() as (_, client):
        body = empty_lists_body(4_000_000, v2=True)
        r = await client.post(INFER, content=body, headers={wire.INFERENCE_HEADER_LENGTH_HEADER: str(len(body))})
    assert r.status_code == 400 and "refused before parsing" in r.json()["error"]


# --------------------------------------------------------------------------- shapes, headers, protobuf


def npy_header_only(shape) -> bytes:
    return npy_raw_header(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}")


def npy_raw_header(text: str) -> bytes:
    header = text.ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()


def v2_zero_shape(binary: bool) -> tuple[bytes, dict[str, str]]:
    tensor = {"name": "input", "datatype": "FP32", "shape": [2**62, 2**62, 0]}
    if not binary:
        return json.dumps({"inputs": [{**tensor, "data": []}]}).encode(), {}
    body = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 0}}]}).encode()
    return body, {wire.INFERENCE_HEADER_LENGTH_HEADER: str(len(body))}


async def test_huge_times_zero_shapes_are_400_on_every_path():
    """Empty, so the byte count passes, yet no array has that shape: numpy's error was a 500."""
    async with model() as (app, client):
        npy = await client.post("/predict", content=npy_header_only((2**31, 2**31, 0)), headers=NPY)
        v2_json = await client.post(INFER, content=v2_zero_shape(False)[0])
        v2_binary = await client.post(INFER, content=v2_zero_shape(True)[0], headers=v2_zero_shape(True)[1])
        request = grpc_codec.messages["ModelInferRequest"](model_name=MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=[2**62, 2**62, 0])
        request.raw_input_contents.append(b"")
        typed = grpc_codec.messages["ModelInferRequest"](model_name=MODEL)
        typed.inputs.add(name="input", datatype="FP32", shape=[2**62, 2**62, 0])
        raw_code, raw_details = await grpc_call(app, request.SerializeToString())
        typed_code, _ = await grpc_call(app, typed.SerializeToString())
    assert npy.status_code == 400 and npy.json()["error"]["code"] == "invalid_tensor", npy.text
    assert "too large" in npy.json()["error"]["message"]
    for r in (v2_json, v2_binary):
        assert r.status_code == 400 and "is empty but its other dimensions exceed" in r.json()["error"], r.text
    assert raw_code == typed_code == grpc.StatusCode.INVALID_ARGUMENT
    assert "is empty but its other dimensions exceed" in raw_details


@pytest.mark.parametrize(
    "value",
    [b"\xb2", b"\xb9", b"9" * 5000, b"-1", b"+16", b" 16", b"0x10", b"1e3"],
    ids=["superscript-two", "superscript-one", "5000-digits", "negative", "plus", "space", "hex", "exponent"],
)
async def test_inference_header_content_length_must_be_ascii_digits(value):
    """``"²".isdigit()`` is True and ``int("²")`` raises: it was a 500; 5000 digits passed isdigit too."""
    body, length = open_inference.encode_request({"input": batch()}, [])
    async with model() as (_, client):
        r = await client.post(INFER, content=body, headers={wire.INFERENCE_HEADER_LENGTH_HEADER: value})
        honest = await client.post(INFER, content=body, headers={wire.INFERENCE_HEADER_LENGTH_HEADER: str(length)})
    assert r.status_code == 400, r.text
    assert "ASCII digits" in r.json()["error"]
    assert honest.status_code == 200


async def grpc_call(app, data: bytes, method: str = "ModelInfer") -> tuple[grpc.StatusCode, str]:
    """Send ``data`` as the request bytes of ``method``: the code and details it answers."""
    async with aio.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
        call = channel.unary_unary(f"/{grpc_codec.SERVICE}/{method}")  # bytes in, bytes out
        try:
            await call(data, timeout=30)
        except aio.AioRpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata", "ServerLive"])
async def test_undecodable_protobuf_is_invalid_argument_saying_so(method):
    async with model() as (app, _):
        code, details = await grpc_call(app, b"\xff\xff\xff\xff", method)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert f"not a valid {method}Request protobuf message" in details
    assert not any(leak in details for leak in LEAKS), details


async def test_a_message_of_millions_of_empty_inputs_is_refused_before_protobuf_builds_them():
    """4.8 million empty ``inputs`` (9.6 MB) were ~400 MB of messages and half a second on the loop."""
    async with model() as (app, _):
        data = b"\x2a\x00" * 4_800_000  # field 5 (inputs), length 0
        assert len(data) < app.state.predictor.max_grpc_bytes
        tracemalloc.start()
        try:
            start = time.perf_counter()
            code, details = await grpc_call(app, data)
            took = time.perf_counter() - start
        finally:
            tracemalloc.stop()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "protobuf fields" in details, details
    assert took < 1.0, took


async def test_grpc_messages_are_bounded_by_the_binary_batch_not_the_json_limit():
    async with model(max_batch=1) as (app, _):
        predictor = app.state.predictor
        assert predictor.max_grpc_bytes < predictor.max_json_bytes / 4
        request = grpc_codec.encode_request(MODEL, {"input": batch(2)}, [])  # two images: 1.2 MB > one's limit
        code, _ = await grpc_call(app, request.SerializeToString())
        one = await grpc_call(app, grpc_codec.encode_request(MODEL, {"input": batch(1)}, []).SerializeToString())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and one[0] == grpc.StatusCode.OK


# --------------------------------------------------------------------------- outputs and messages


class NonFiniteBackend:
    """Logits with NaN and ±inf in them (an overflowing model: finite inputs can still get there)."""

    name, kind = MODEL, "random"

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((x.shape[0], 1000), np.float32)
        out[:, :3] = [np.nan, np.inf, -np.inf]
        return out


def strict_json(text: bytes):
    def refuse(constant):
        raise AssertionError(f"bare {constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


async def test_non_finite_outputs_are_null_in_json_and_exact_in_binary():
    """Decision: JSON has no NaN or infinity, so a non-finite output value is ``null`` (what
    JavaScript, orjson and MLServer write; NumPy reads it back as NaN); binary outputs keep it exact."""
    async with model() as (app, client):
        app.state.predictor.backend = NonFiniteBackend()
        body = json.dumps(
            {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": batch().ravel().tolist()}
                ]
            }
        ).encode()
        as_json = await client.post(INFER, content=body)
        asked = [open_inference.RequestedOutput("logits", True), open_inference.RequestedOutput("probabilities", False)]
        mixed_body, length = open_inference.encode_request({"input": batch()}, asked)
        mixed = await client.post(INFER, content=mixed_body, headers={wire.INFERENCE_HEADER_LENGTH_HEADER: str(length)})
    assert as_json.status_code == 200, as_json.text
    outputs = {o["name"]: o["data"] for o in strict_json(as_json.content)["outputs"]}
    assert outputs["logits"][:4] == [None, None, None, 0.0]
    assert all(v is None for v in outputs["probabilities"])  # softmax over NaN is NaN throughout
    assert mixed.status_code == 200
    head = int(mixed.headers[wire.INFERENCE_HEADER_LENGTH_HEADER])
    strict_json(mixed.content[:head])
    answer = open_inference.decode_response(mixed.content, str(head), max_elements=10**6).outputs
    np.testing.assert_array_equal(answer["logits"][0, :3], [np.nan, np.inf, -np.inf])  # binary: exact
    assert np.isnan(answer["probabilities"]).all()  # null read back as NaN


class BrokenBackend:
    name, kind = MODEL, "random"

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise ValueError("shapes (1,3) and (4,) not aligned: an internal detail")


async def test_a_failure_of_ours_over_grpc_is_internal_without_the_exceptions_name_or_words():
    """gRPC's own answer to an escaping exception is UNKNOWN "Unexpected <class 'ValueError'>: …"."""
    async with model() as (app, _):
        app.state.predictor.backend = BrokenBackend()
        code, details = await grpc_call(
            app, grpc_codec.encode_request(MODEL, {"input": batch()}, []).SerializeToString()
        )
    assert code == grpc.StatusCode.INTERNAL and details == "internal error"


@pytest.mark.parametrize(
    "body, headers",
    [
        (npy_raw_header("{'descr': x, 'fortran_order': False, 'shape': (2,)}"), NPY),  # an AST node's repr
        (b"\x93NUMPY\x09\x00" + b"\0" * 100, NPY),
        (b'{"shape": [1], "dtype": {"x": [1]}, "data": [1]}', JSON_TENSOR),
        (b'{"shape": {"a": 1}, "dtype": "float32", "data": [1]}', JSON_TENSOR),
    ],
    ids=["npy-name-node", "npy-version", "json-dtype-object", "json-shape-object"],
)
async def test_predict_messages_say_what_was_wrong_never_which_exception(body, headers):
    async with model() as (_, client):
        r = await client.post("/predict", content=body, headers=headers)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert not any(leak in message for leak in LEAKS), message


V2_BAD = [
    (b'{"id": "\xff"}', {}, "not UTF-8"),
    (
        b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [' + b"1" * 5000 + b"]}]}",
        {},
        "too long",
    ),
    (b"[" * 5000 + b"]" * 5000, {}, "nests too deeply"),
    (
        json.dumps({"inputs": [{"name": "input", "datatype": ["FP32"], "shape": [1], "data": [1]}]}).encode(),
        {},
        '["FP32"]',
    ),
    (
        json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [True], "data": [1]}]}).encode(),
        {},
        "[true]",
    ),
    (
        json.dumps({"inputs": [{"name": "input", "datatype": "INT8", "shape": [1], "data": [10**30]}]}).encode(),
        {},
        "range",
    ),
    (
        json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [{}]}]}).encode(),
        {},
        "numbers",
    ),
]


@pytest.mark.parametrize(
    "body, headers, words", V2_BAD, ids=["utf8", "digits", "deep", "datatype", "shape", "int8", "object"]
)
async def test_v2_messages_say_what_was_wrong_never_which_exception(body, headers, words):
    async with model() as (_, client):
        r = await client.post(INFER, content=body, headers=headers)
    assert r.status_code == 400, r.text
    message = r.json()["error"]
    assert words in message and not any(leak in message for leak in LEAKS), message
    assert "'list'" not in message and "[True]" not in message  # JSON as sent, not Python's reprs


def test_the_json_limit_is_the_largest_batch_as_json_text_and_the_budget_its_nested_lists():
    from model.dataplane import JSON_BYTES_PER_FLOAT, Predictor

    predictor = Predictor(make_settings(max_batch=16))
    floats = 16 * 3 * 224 * 224
    assert predictor.max_json_bytes == floats * JSON_BYTES_PER_FLOAT + 4096 and JSON_BYTES_PER_FLOAT == 24
    assert predictor.max_tensor_bytes == floats * 4 + 4096 < predictor.max_grpc_bytes < predictor.max_json_bytes
    assert predictor.json_budget.lists == 1 + 16 * 676 + codec.JSON_SLACK
    assert math.isclose(predictor.json_budget.values, floats, rel_tol=0.01)
