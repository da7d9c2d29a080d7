"""The model's gRPC service in-process (a real socket), spoken to by Triton's own asyncio gRPC client
and by preprocess's: health, metadata, inference equal to /predict, errors as gRPC statuses,
request metrics, the trace id in the trailing metadata, and one trace across the call."""

import asyncio
import contextlib
import gc

import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as tritongrpc
from prometheus_client import REGISTRY
from tritonclient.utils import InferenceServerException

from ml_pipeline.client.retry import RetryPolicy
from ml_pipeline.core import codec, wire
from ml_pipeline.core.errors import BadGateway
from ml_pipeline.observability.tracing import create_tracer_provider
from model.app import create_app
from preprocess.model_grpc import GrpcModel
from support.apps import make_settings
from support.triton import grpc_input

pytestmark = pytest.mark.anyio
MODEL = "random-1000"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
async def one_event_loop():
    """This module's tests share one event loop, as gRPC's asyncio stack expects (grpc_aio.pyx:
    "the gRPC Python Async Stack should use a single event loop"). Its poller hands each completion
    to the loop its operation started on; one that came after a test's loop had closed failed
    whichever test ran then with "Event loop is closed" (twice in CI, on the max-age test). Before
    the loop closes, what the module's closed channels and stopped servers still owe it arrives."""
    yield
    gc.collect()
    await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def model_app(exporter=None, **settings):
    app = create_app(make_settings(**settings), span_exporter=exporter)
    async with app.router.lifespan_context(app):
        yield app, f"127.0.0.1:{app.state.grpc_port}"


def batch(n=1):
    return np.random.default_rng(5).uniform(-1, 1, (n, 3, 224, 224)).astype(np.float32)


async def test_triton_grpc_client_health_metadata_and_inference_equal_to_predict():
    x = batch(2)
    async with model_app() as (app, target):
        client = tritongrpc.InferenceServerClient(target)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready(MODEL) and await client.is_model_ready(MODEL, "1")
            assert "binary_tensor_data" in (await client.get_server_metadata()).extensions
            meta = await client.get_model_metadata(MODEL)
            assert (meta.inputs[0].name, meta.inputs[0].datatype, list(meta.inputs[0].shape)) == (
                "input",
                "FP32",
                [-1, 3, 224, 224],
            )
            result = await client.infer(MODEL, [grpc_input(x)], outputs=[tritongrpc.InferRequestedOutput("logits")])
        finally:
            await client.close()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model.test") as http:
            predicted = await http.post(
                "/predict", content=codec.encode(x), headers={"Content-Type": wire.NPY_MEDIA_TYPE}
            )
    np.testing.assert_array_equal(result.as_numpy("logits"), codec.decode(predicted.content))
    assert result.as_numpy("probabilities") is None  # only what was asked for


@pytest.mark.parametrize(
    "make, code, words",
    [
        (
            lambda x: (MODEL, [grpc_input(x.astype(np.float64), datatype="FP64")]),
            "StatusCode.INVALID_ARGUMENT",
            "must be FP32",
        ),
        (lambda x: (MODEL, [grpc_input(x[:, :, :200])]), "StatusCode.INVALID_ARGUMENT", "is not [N,3,224,224]"),
        (lambda x: (MODEL, [grpc_input(x, name="pixels")]), "StatusCode.INVALID_ARGUMENT", "takes one input"),
        (lambda x: ("resnet50", [grpc_input(x)]), "StatusCode.NOT_FOUND", "unknown model 'resnet50'"),
    ],
)
async def test_bad_calls_are_grpc_statuses_with_the_reason(make, code, words):
    async with model_app() as (_, target):
        client = tritongrpc.InferenceServerClient(target)
        try:
            with pytest.raises(InferenceServerException) as refused:
                await client.infer(*make(batch()))
        finally:
            await client.close()
    assert refused.value.status() == code and words in refused.value.message()


def requests_counted(status: str) -> float:
    labels = {
        "service": "model",
        "route": "/inference.GRPCInferenceService/ModelInfer",
        "method": "GRPC",
        "status": status,
    }
    return REGISTRY.get_sample_value("ml_pipeline_requests_total", labels) or 0.0


async def test_preprocess_client_one_trace_metrics_and_model_headers(exporter):
    before_ok, before_bad = requests_counted("200"), requests_counted("404")
    async with model_app(exporter) as (_app, target):
        client = GrpcModel(
            target, timeout_s=5, tracer_provider=create_tracer_provider("preprocess", make_settings(), exporter)
        )
        try:
            logits, headers = await client.logits(MODEL, batch())
            with pytest.raises(BadGateway) as unknown:
                await client.logits("nope", batch())
        finally:
            await client.aclose()
    assert logits.shape == (1, 1000) and headers[wire.MODEL_NAME_HEADER] == MODEL
    assert "model.inference;dur=" in headers[wire.SERVER_TIMING_HEADER]
    assert "NOT_FOUND" in unknown.value.message  # we built the request: the chain's fault, a 502
    assert requests_counted("200") == before_ok + 1 and requests_counted("404") == before_bad + 1
    spans = exporter.get_finished_spans()
    infer_spans = [s for s in spans if s.name.endswith("/ModelInfer")]
    client_span = next(s for s in infer_spans if s.kind.name == "CLIENT")
    server_span = next(s for s in infer_spans if s.kind.name == "SERVER")
    assert server_span.context.trace_id == client_span.context.trace_id  # W3C context in the call's metadata
    inference = next(s for s in spans if s.name == "inference")
    assert inference.context.trace_id == client_span.context.trace_id
    decode = next(s for s in spans if s.name == "tensor_decode")
    assert decode.attributes["ml_pipeline.handoff.transport"] == "v2-grpc"


@contextlib.asynccontextmanager
async def scripted_model(codes):
    """A gRPC ModelInfer that fails with each of ``codes`` in turn, then answers 1000 logits."""
    import grpc
    from grpc import aio

    from ml_pipeline.core import open_inference_grpc as grpc_codec

    calls = []

    async def model_infer(request, context):
        calls.append(request.model_name)
        if len(calls) <= len(codes):
            await context.abort(codes[len(calls) - 1], "scripted failure")
        return grpc_codec.encode_response(MODEL, "1", {"logits": np.zeros((1, 1000), np.float32)}, None)

    request_type, response_type = grpc_codec.METHODS["ModelInfer"]
    handler = grpc.unary_unary_rpc_method_handler(
        model_infer, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
    )
    server = aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(grpc_codec.SERVICE, {"ModelInfer": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", calls
    finally:
        await server.stop(None)


def grpc_retries(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("ml_pipeline_downstream_retries_total", {"downstream": "model", "reason": reason})
        or 0.0
    )


async def test_an_unavailable_answer_is_tried_again_within_max_attempts():
    import grpc

    from ml_pipeline.core.errors import DownstreamUnavailable

    before = grpc_retries("unavailable")
    async with scripted_model([grpc.StatusCode.UNAVAILABLE]) as (target, calls):
        client = GrpcModel(
            target,
            timeout_s=5,
            tracer_provider=create_tracer_provider("p", make_settings()),
            retry=RetryPolicy("model", 2),
        )
        logits, _ = await client.logits(MODEL, batch())
        await client.aclose()
    assert logits.shape == (1, 1000) and len(calls) == 2 and grpc_retries("unavailable") == before + 1
    async with scripted_model([grpc.StatusCode.UNAVAILABLE] * 2) as (target, calls):
        client = GrpcModel(
            target,
            timeout_s=5,
            tracer_provider=create_tracer_provider("p", make_settings()),
            retry=RetryPolicy("model", 2),
        )
        with pytest.raises(DownstreamUnavailable):
            await client.logits(MODEL, batch())
        await client.aclose()
    assert len(calls) == 2  # at most MODEL_MAX_ATTEMPTS
    async with scripted_model([grpc.StatusCode.INVALID_ARGUMENT]) as (target, calls):
        client = GrpcModel(
            target,
            timeout_s=5,
            tracer_provider=create_tracer_provider("p", make_settings()),
            retry=RetryPolicy("model", 3),
        )
        with pytest.raises(BadGateway):
            await client.logits(MODEL, batch())
        await client.aclose()
    assert len(calls) == 1  # our own bad request is never retried


@pytest.mark.parametrize("max_age_s, reconnected", [(0.5, True), (15.0, False)])
async def test_the_server_ends_connections_past_their_max_age_and_no_call_fails(max_age_s, reconnected):
    """A client must reconnect (and so resolve a ``dns:///`` name again) every GRPC_MAX_CONNECTION_AGE_S:
    how a replica added after it connected gets traffic. The GOAWAY is graceful: no call fails."""
    import grpc

    async with model_app(grpc_max_connection_age_s=max_age_s) as (_app, target):
        client = GrpcModel(target, timeout_s=5, tracer_provider=create_tracer_provider("p", make_settings()))
        channel = client._channel
        states: list[grpc.ChannelConnectivity] = []

        async def watch() -> None:
            # Until the channel's close resolves the pending watch: a watch cancelled instead stays
            # registered in gRPC's core, whose poller thread then answers it on a closed event loop.
            state = channel.get_state()
            while state is not grpc.ChannelConnectivity.SHUTDOWN:
                await channel.wait_for_state_change(state)
                try:
                    state = channel.get_state()
                except grpc.aio.UsageError:  # closed
                    return
                states.append(state)

        watcher = asyncio.create_task(watch())
        try:
            loop = asyncio.get_running_loop()
            end, calls = loop.time() + 2.0, 0
            while loop.time() < end:
                logits, _ = await client.logits(MODEL, batch())
                assert logits.shape == (1, 1000)
                calls += 1
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
            await asyncio.wait_for(watcher, timeout=5)
    connections = states.count(grpc.ChannelConnectivity.READY)
    assert calls > 10 and (connections > 1) == reconnected, states
