"""The model's data plane on its own, without the web layer: the body limit per encoding, and the
same logits whichever encoding carried the batch."""

import numpy as np
import pytest
from opentelemetry.trace import NoOpTracer

from ml_pipeline.core import codec, handoff, wire
from ml_pipeline.core.errors import BadRequest
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
