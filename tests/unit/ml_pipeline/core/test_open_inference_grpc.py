"""The Open Inference Protocol's gRPC messages: tensors round-trip through raw and typed contents,
bad requests are the same 400s as over HTTP, and Triton's client loads beside our messages."""

import subprocess
import sys

import numpy as np
import pytest

from ml_pipeline.core import open_inference_grpc as grpc_codec
from ml_pipeline.core.errors import BadRequest

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
        ("ml_pipeline.core.open_inference_grpc", "tritonclient.grpc"),
        ("tritonclient.grpc", "ml_pipeline.core.open_inference_grpc"),
    ):
        probe = f"import {first}, {second}; print('ok')"
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


REQUEST = grpc_codec.messages["ModelInferRequest"]


def test_parse_reads_what_the_encoder_writes():
    request = grpc_codec.encode_request("m", {"input": np.ones((2, 3), np.float32)}, ["logits"])
    request.parameters["priority"].int64_param = 3  # a map: its entries are messages too
    parsed = grpc_codec.parse(REQUEST, request.SerializeToString())
    assert parsed == request


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff\xff",  # a varint that never ends
        b"\x0a\x05ab",  # model_name: 5 bytes declared, 2 there
        b"\x2a\x03\x0a\x05a",  # an input whose name runs past the input's end
        b"\x0b",  # a group: proto2's, no field here
        b"\x0f",  # wire type 7: none such
        b"\x39\x00\x00",  # a fixed64 cut short
    ],
)
def test_bytes_that_are_no_message_are_a_400_saying_so(data):
    with pytest.raises(BadRequest) as refused:
        grpc_codec.parse(REQUEST, data)
    assert (refused.value.status, refused.value.code) == (400, "invalid_inference_request")
    assert refused.value.message == "the request is not a valid ModelInferRequest protobuf message"


@pytest.mark.parametrize(
    "data",
    [
        b"\x2a\x00" * 5000,  # 5000 empty inputs
        b"\x2a\x02\x1a\x00" * 3000,  # 3000 inputs of one field each: nested fields count too
        b"\x22\x00" * 5000,  # 5000 empty parameter map entries
        b"\x0a\x01a" * 5000,  # one field, repeated: protobuf keeps the last, we count them all
    ],
    ids=["inputs", "nested", "map-entries", "repeated-scalar"],
)
def test_more_fields_than_any_request_has_are_refused_before_parsing(data):
    with pytest.raises(BadRequest, match=f"more than {grpc_codec.MAX_WIRE_FIELDS} protobuf fields"):
        grpc_codec.parse(REQUEST, data)


def test_typed_contents_of_the_wrong_length_are_refused_before_conversion():
    request = grpc_codec.messages["ModelInferRequest"](model_name="m")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 2])
    tensor.contents.fp32_contents.extend([0.0] * 100_000)
    with pytest.raises(BadRequest, match="data holds 100000 elements, shape \\[2, 2\\] needs 4"):
        grpc_codec.decode_request(request, max_elements=MAX)


def test_a_shape_of_millions_of_dimensions_is_refused_before_it_is_listed():
    request = grpc_codec.messages["ModelInferRequest"](model_name="m")
    request.inputs.add(name="input", datatype="FP32", shape=[1] * 1_000_000)
    request.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(BadRequest, match="at most 32 dimensions"):
        grpc_codec.decode_request(request, max_elements=MAX)


@pytest.mark.parametrize("shape", [[2**62, 2**62, 0], [0, MAX + 1]])
def test_an_empty_shape_whose_other_dimensions_exceed_the_bound_is_a_400(shape):
    request = grpc_codec.messages["ModelInferRequest"](model_name="m")
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"")
    with pytest.raises(BadRequest, match="is empty but its other dimensions exceed"):
        grpc_codec.decode_request(request, max_elements=MAX)
