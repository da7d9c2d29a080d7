"""The Open Inference Protocol's gRPC messages: tensors round-trip through raw and typed contents,
bad requests are the same 400s as over HTTP, and Triton's client loads beside our messages."""

import subprocess
import sys

import numpy as np
import pytest

from ml_pipeline import open_inference_grpc as grpc_codec
from ml_pipeline.errors import BadRequest

MAX = 1_000_000


def test_a_request_and_a_response_round_trip_as_raw_bytes():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    request = grpc_codec.encode_request("m", {"input": x, "ids": np.arange(3, dtype=np.int64)}, ["logits"])
    wire_bytes = request.SerializeToString()
    decoded = grpc_codec.decode_request(
        grpc_codec.messages["ModelInferRequest"].FromString(wire_bytes), max_elements=MAX
    )
    np.testing.assert_array_equal(decoded.inputs["input"], x)
    np.testing.assert_array_equal(decoded.inputs["ids"], [0, 1, 2])
    assert [o.name for o in decoded.outputs] == ["logits"]
    response = grpc_codec.encode_response("m", "1", {"logits": x[:, :, 0]}, "req-1")
    back = grpc_codec.messages["ModelInferResponse"].FromString(response.SerializeToString())
    assert back.id == "req-1" and back.model_version == "1"
    np.testing.assert_array_equal(grpc_codec.decode_response(back, max_elements=MAX).outputs["logits"], x[:, :, 0])


def test_typed_contents_are_read_when_no_raw_bytes_come():
    request = grpc_codec.messages["ModelInferRequest"](model_name="m")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.5])
    decoded = grpc_codec.decode_request(request, max_elements=MAX)
    np.testing.assert_array_equal(decoded.inputs["input"], [[1, 2], [3, 4.5]])


def bad(**changes):
    request = grpc_codec.encode_request("m", {"input": np.zeros((1, 4), np.float32)}, [])
    for key, value in changes.items():
        if key == "raw":
            request.raw_input_contents[0] = value
        elif key == "extra_raw":
            request.raw_input_contents.append(value)
        else:
            setattr(request.inputs[0], key, value)
    return request


@pytest.mark.parametrize(
    "request_, words",
    [
        (lambda: bad(raw=b"\0" * 15), "15 bytes of data for 4 FP32 elements"),
        (lambda: bad(datatype="FP8"), "datatype 'FP8'"),
        (lambda: bad(datatype="BYTES"), "datatype 'BYTES'"),
        (lambda: bad(extra_raw=b"\0"), "raw_input_contents has 2 entries for 1 inputs"),
        (lambda: bad(name=""), "name must be a non-empty string"),
        (lambda: grpc_codec.messages["ModelInferRequest"](model_name="m"), "inputs must be a non-empty list"),
    ],
)
def test_bad_requests_are_400s_saying_what(request_, words):
    with pytest.raises(BadRequest) as refused:
        grpc_codec.decode_request(request_(), max_elements=MAX)
    assert words in refused.value.message


def test_our_messages_and_tritons_client_load_in_one_process():
    """Triton's client registers the same inference.* names in protobuf's default pool; ours live
    in a pool of their own, so neither import order fails."""
    for first, second in (
        ("ml_pipeline.open_inference_grpc", "tritonclient.grpc"),
        ("tritonclient.grpc", "ml_pipeline.open_inference_grpc"),
    ):
        probe = f"import {first}, {second}; print('ok')"
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
