"""The model's data plane on its own, without the web layer: the body limit per encoding, the same
logits whichever encoding carried the batch, and how many runs a replica does at once."""

import threading
import time

import anyio
import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import NoOpTracer

from ml_pipeline.core import codec, deadline, handoff, wire
from ml_pipeline.core.errors import BadRequest, DeadlineExceeded
from ml_pipeline.observability.stages import StageTimer
from model.dataplane import REFERENCE_MAX_BYTES, Predictor
from support.apps import make_settings

pytestmark = pytest.mark.anyio


def batch(n=2):
    return np.random.default_rng(1).uniform(-1, 1, (n, 3, 224, 224)).astype(np.float32)


def test_each_encoding_has_its_own_body_limit():
    predictor = Predictor(make_settings(max_batch=2))
    tensor_bytes = 2 * 3 * 224 * 224 * 4
    assert predictor.body_limit("http") >= tensor_bytes + 128  # the tensor and its .npy header
    assert predictor.body_limit("http") < predictor.body_limit("json")  # JSON spends ~24 characters a float
    assert predictor.body_limit("volume") == REFERENCE_MAX_BYTES


async def test_every_encoding_gives_the_same_logits(tmp_path):
    predictor = Predictor(make_settings(shared_data_dir=tmp_path))
    await predictor.load()
    x = batch()
    name, _ = handoff.write_tensor(tmp_path, x)
    bodies = {"http": codec.encode(x), "json": handoff.encode_json(x), "volume": handoff.encode_reference(name)}
    answers = {t: await predictor.predict(body, t, StageTimer(NoOpTracer(), "model")) for t, body in bodies.items()}
    logits = {t: codec.decode(a) for t, a in answers.items()}
    assert logits["http"].shape == (2, 1000)
    np.testing.assert_array_equal(logits["json"], logits["http"])
    np.testing.assert_array_equal(logits["volume"], logits["http"])
    assert predictor.identity().backend == "random"


async def test_answers_name_the_model_and_replica_except_in_protocol_only_mode():
    """The data plane says who answered; model.metadata turns that into the headers (or gRPC
    metadata) every route sends, and sends none where the server speaks the protocol only."""
    from model.metadata import answer_headers

    predictor = Predictor(make_settings(service_instance_id="model-7"))
    await predictor.load()
    timer = StageTimer(NoOpTracer(), "model")
    await predictor.predict(codec.encode(batch(1)), "http", timer)
    headers = answer_headers(predictor, timer)
    assert headers[wire.MODEL_BACKEND_HEADER] == "random"
    assert headers[wire.MODEL_INSTANCE_HEADER] == "model-7"
    assert "tensor_decode" in headers[wire.SERVER_TIMING_HEADER]
    protocol_only = Predictor(make_settings(open_inference_only=True))
    await protocol_only.load()
    assert answer_headers(protocol_only, timer) == {}


async def test_a_batch_past_max_batch_is_refused_before_inference():
    predictor = Predictor(make_settings(max_batch=1))
    await predictor.load()
    with pytest.raises(BadRequest, match=r"batch size 2 is outside 1\.\.1"):
        await predictor.predict(codec.encode(batch(2)), "http", StageTimer(NoOpTracer(), "model"))


def test_the_protocols_tensor_names_are_the_graphs():
    """preprocess names the tensors from ml_pipeline.core.wire (it has no model package); the ONNX graph
    the model serves must use the same names."""
    from model import convert

    assert (convert.INPUT_NAME, convert.OUTPUT_NAME) == (wire.MODEL_INPUT_NAME, wire.MODEL_OUTPUT_NAME)


class Overlapping:
    """The loaded backend, each run taking ``seconds``, counting the runs and how many overlapped."""

    def __init__(self, backend, seconds=0.05):
        self.backend, self.seconds = backend, seconds
        self.name, self.kind = backend.name, backend.kind
        self.runs = self.running = self.most = 0
        self._lock = threading.Lock()

    def predict(self, x):
        with self._lock:
            self.runs += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.seconds)
            return self.backend.predict(x)
        finally:
            with self._lock:
                self.running -= 1


async def loaded_predictor(seconds=0.05, **settings):
    predictor = Predictor(make_settings(**settings))
    await predictor.load()
    predictor.backend = Overlapping(predictor.backend, seconds)
    return predictor


def queue_stats(predictor):
    return predictor.statistics.report()["model_stats"][0]["inference_stats"]["queue"]


@pytest.mark.parametrize("slots", [1, 3])
async def test_a_replica_runs_as_many_inferences_at_once_as_it_is_allowed(slots):
    """One run at a time by default (each already has the replica's ONNX Runtime threads); the others
    wait their turn, and that wait is the statistics' queue time."""
    predictor = await loaded_predictor(max_concurrent_inferences=slots)
    async with anyio.create_task_group() as tasks:
        for _ in range(3):
            tasks.start_soon(predictor.predict, codec.encode(batch(1)), "http", StageTimer(NoOpTracer(), "model"))
    assert (predictor.backend.runs, predictor.backend.most) == (3, slots)
    queue = queue_stats(predictor)
    assert queue["count"] == 3
    if slots == 1:
        assert queue["ns"] >= 0.05 * 1e9 * (1 + 2)  # the second waited one run, the third two
    else:
        assert queue["ns"] == 0  # nobody waited


def test_one_run_at_a_time_is_the_default():
    assert make_settings().max_concurrent_inferences == 1


async def test_the_inference_span_says_how_long_its_request_waited_for_its_turn(exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    predictor = await loaded_predictor(seconds=0.1)
    async with anyio.create_task_group() as tasks:
        for _ in range(2):
            tasks.start_soon(predictor.predict, codec.encode(batch(1)), "http", StageTimer(tracer, "model"))
    waits = [
        s.attributes.get(wire.Attr.INFERENCE_QUEUE_MS) for s in exporter.get_finished_spans() if s.name == "inference"
    ]
    assert len(waits) == 2 and waits.count(None) == 1  # the first found the model idle
    assert max(w for w in waits if w is not None) >= 90  # the second waited for the first's 100 ms run


async def test_a_request_whose_deadline_passes_while_it_waits_for_its_turn_is_not_run():
    predictor = await loaded_predictor(seconds=0.3)

    async def late():
        token = deadline.start(0.1)
        try:
            with pytest.raises(DeadlineExceeded, match="before inference"):
                await predictor.predict(codec.encode(batch(1)), "http", StageTimer(NoOpTracer(), "model"))
        finally:
            deadline.reset(token)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(predictor.predict, codec.encode(batch(1)), "http", StageTimer(NoOpTracer(), "model"))
        await anyio.sleep(0.05)  # the first run has started
        tasks.start_soon(late)
    assert predictor.backend.runs == 1
    # The slot was given back: the next request runs.
    await predictor.predict(codec.encode(batch(1)), "http", StageTimer(NoOpTracer(), "model"))
    assert predictor.backend.runs == 2
