"""Triton's configuration and statistics extensions on the model, in-process (issue 29): the model
configuration over gRPC equal to the REST one; the statistics extension over REST and gRPC, in
Triton's format (Triton's own client parses it), counted per model and version across /v2 REST,
gRPC and /predict, its stages the same timings as the spans' (``Server-Timing``), failures apart,
executions per batch with dynamic batching; both extensions named in the server metadata."""

import asyncio
import contextlib
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as tritongrpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

from ml_pipeline.core import codec, open_inference, wire
from ml_pipeline.observability.stages import parse_server_timing
from model.app import create_app
from support.apps import make_settings

pytestmark = pytest.mark.anyio
MODEL = "random-1000"
INFER = f"/v2/models/{MODEL}/infer"
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


@contextlib.asynccontextmanager
async def model(**settings):
    """(HTTP client, Triton's gRPC client) of one in-process model."""
    app = create_app(make_settings(**settings))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model.test") as http:
            grpc = tritongrpc.InferenceServerClient(f"127.0.0.1:{app.state.grpc_port}")
            try:
                yield http, grpc
            finally:
                await grpc.close()


def batch(n=1, seed=7):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 224, 224)).astype(np.float32)


async def v2_infer(http, x, *, binary=True):
    body, length = open_inference.encode_request({"input": x}, [], binary=binary)
    headers = {wire.INFERENCE_HEADER_LENGTH_HEADER: str(length)} if length is not None else {}
    return await http.post(INFER, content=body, headers=headers)


def grpc_input(x):
    inp = tritongrpc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def model_stat(report):
    assert [(s["name"], s["version"]) for s in report["model_stats"]] == [(MODEL, "1")], report
    return report["model_stats"][0]


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("batching", [False, True])
async def test_model_config_over_grpc_is_the_rest_config(batching):
    settings = {"dynamic_batching": True, "preferred_batch_sizes": [2, 4]} if batching else {}
    async with model(max_batch=4, **settings) as (http, grpc):
        rest = (await http.get(f"/v2/models/{MODEL}/config")).json()
        answered = await grpc.get_model_config(MODEL)
        versioned = await grpc.get_model_config(MODEL, "1")
        with pytest.raises(InferenceServerException) as unknown:
            await grpc.get_model_config("resnet50")
    # Triton's own ModelConfig message reads the REST JSON into exactly what gRPC answered.
    assert answered.config == json_format.ParseDict(rest, model_config_pb2.ModelConfig()) == versioned.config
    assert answered.config.max_batch_size == 4 and list(answered.config.input[0].dims) == [3, 224, 224]
    assert answered.config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert answered.config.HasField("dynamic_batching") is batching
    if batching:
        assert list(answered.config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert unknown.value.status() == "StatusCode.NOT_FOUND" and "unknown model 'resnet50'" in unknown.value.message()


async def test_server_metadata_names_the_configuration_and_statistics_extensions():
    async with model() as (http, grpc):
        rest = (await http.get("/v2")).json()["extensions"]
        over_grpc = list((await grpc.get_server_metadata()).extensions)
    assert rest == over_grpc and {"model_configuration", "statistics", "binary_tensor_data"} <= set(rest)


# --------------------------------------------------------------------------- statistics


async def test_statistics_start_at_zero_in_tritons_format():
    async with model() as (http, grpc):
        r = await http.get("/v2/models/stats")
        over_grpc = await grpc.get_inference_statistics()
    assert r.status_code == 200, r.text
    stat = model_stat(r.json())
    assert set(stat) >= {"name", "version", "last_inference", "inference_count", "execution_count", "inference_stats"}
    assert set(stat["inference_stats"]) == set(DURATIONS)
    assert all(stat["inference_stats"][d] == {"count": 0, "ns": 0} for d in DURATIONS)
    assert (stat["last_inference"], stat["inference_count"], stat["execution_count"]) == (0, 0, 0)
    # Triton's own response message reads the REST JSON into exactly what gRPC answered.
    assert over_grpc == json_format.ParseDict(r.json(), service_pb2.ModelStatisticsResponse())


async def test_statistics_count_every_protocol_per_model_and_version():
    """2 + 1 images over REST (binary, JSON), 3 over gRPC, 2 over /predict: four requests, eight
    inferences, four executions (no dynamic batching); two refused requests fail; a request for a
    model this server does not serve counts nowhere."""
    before_ms = int(time.time() * 1000)
    async with model() as (http, grpc):
        assert (await v2_infer(http, batch(2))).status_code == 200
        assert (await v2_infer(http, batch(1), binary=False)).status_code == 200
        await grpc.infer(MODEL, [grpc_input(batch(3))])
        r = await http.post("/predict", content=codec.encode(batch(2)), headers={"Content-Type": wire.NPY_MEDIA_TYPE})
        assert r.status_code == 200
        assert (await v2_infer(http, batch(1)[:, :2])).status_code == 400  # wrong shape: a failure of this model
        with pytest.raises(InferenceServerException):
            await grpc.infer(MODEL, [grpc_input(np.full((1, 3, 224, 224), np.inf, np.float32))])
        assert (await http.post("/v2/models/nope/infer", content=b"{}")).status_code == 404
        reports = [
            (await http.get(path)).json()
            for path in ("/v2/models/stats", f"/v2/models/{MODEL}/stats", f"/v2/models/{MODEL}/versions/1/stats")
        ]
        over_grpc = [await grpc.get_inference_statistics(*args) for args in ((), (MODEL,), (MODEL, "1"))]
    after_ms = int(time.time() * 1000)
    stat = model_stat(reports[0])
    assert reports[1] == reports[2] == reports[0]
    for answer in over_grpc:
        assert answer == json_format.ParseDict(reports[0], service_pb2.ModelStatisticsResponse())
    stats = stat["inference_stats"]
    assert (stats["success"]["count"], stats["fail"]["count"]) == (4, 2)
    assert (stat["inference_count"], stat["execution_count"]) == (2 + 1 + 3 + 2, 4)
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[stage]["count"] == 4, stage
    for stage in ("success", "fail", "compute_input", "compute_infer", "compute_output"):
        assert stats[stage]["ns"] > 0, stage
    assert stats["queue"]["ns"] == 0  # one request at a time, no dynamic batching: nothing waited for its turn
    assert stats["success"]["ns"] >= sum(stats[s]["ns"] for s in ("compute_input", "compute_infer", "compute_output"))
    assert stats["cache_hit"] == stats["cache_miss"] == {"count": 0, "ns": 0}
    assert before_ms <= stat["last_inference"] <= after_ms


async def test_the_statistics_stages_are_the_spans_timings():
    """compute_input, compute_infer and compute_output are the model's tensor_decode, inference and
    tensor_encode stages: the durations ``Server-Timing`` reported for each request, summed."""
    async with model() as (http, _):
        answers = [
            await v2_infer(http, batch(2)),
            await v2_infer(http, batch(1), binary=False),
            await http.post("/predict", content=codec.encode(batch(1)), headers={"Content-Type": wire.NPY_MEDIA_TYPE}),
        ]
        stats = model_stat((await http.get("/v2/models/stats")).json())["inference_stats"]
    reported = [parse_server_timing(r.headers["server-timing"]) for r in answers]
    for stage, name in (
        ("compute_input", "tensor_decode"),
        ("compute_infer", "inference"),
        ("compute_output", "tensor_encode"),
    ):
        shown_ms = sum(timings[f"model.{name}"] for timings in reported)
        assert stats[stage]["ns"] / 1e6 == pytest.approx(shown_ms, abs=0.002 * len(answers)), stage  # 3 decimals shown


async def test_statistics_of_an_unknown_model_or_version_are_not_found():
    async with model() as (http, grpc):
        responses = [await http.get(p) for p in ("/v2/models/nope/stats", f"/v2/models/{MODEL}/versions/7/stats")]
        with pytest.raises(InferenceServerException) as unknown:
            await grpc.get_inference_statistics("nope")
    for r in responses:
        assert r.status_code == 404 and set(r.json()) == {"error"}, r.text
    assert unknown.value.status() == "StatusCode.NOT_FOUND"


async def test_with_dynamic_batching_requests_queue_and_share_executions():
    async with model(dynamic_batching=True, max_queue_delay_ms=200, max_batch=8) as (http, grpc):
        answers = await asyncio.gather(
            *(v2_infer(http, batch(1, seed=i)) for i in range(2)),
            *(grpc.infer(MODEL, [grpc_input(batch(1, seed=i))]) for i in range(2, 4)),
        )
        stat = model_stat((await http.get(f"/v2/models/{MODEL}/stats")).json())
    assert all(a.status_code == 200 for a in answers[:2])
    stats = stat["inference_stats"]
    assert stat["inference_count"] == stats["success"]["count"] == stats["queue"]["count"] == 4
    assert 1 <= stat["execution_count"] < 4  # they ran together
    assert stats["queue"]["ns"] > 0
