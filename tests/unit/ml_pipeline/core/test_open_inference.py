"""The Open Inference Protocol codec on its own: requests and responses round-trip, JSON and binary
alike, and every malformed body is a 400 naming what is wrong (never another exception)."""

import contextlib
import json

import numpy as np
import pytest

from ml_pipeline.core import codec
from ml_pipeline.core import open_inference as oip
from ml_pipeline.core.errors import BadRequest

MAX = 1_000_000


def tensor(shape=(2, 3), dtype=np.float32):
    values = np.arange(np.prod(shape)).reshape(shape)
    return (values / 7).astype(dtype) if np.issubdtype(dtype, np.floating) else values.astype(dtype)


def binary_body(header: dict, *chunks: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), str(len(head))


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8, np.bool_, np.float16])
def test_a_request_round_trips(binary, dtype):
    x = tensor(dtype=dtype) if dtype is not np.bool_ else tensor() > 0.3
    body, length = oip.encode_request(
        {"x": x, "y": tensor((4,))}, [oip.RequestedOutput("out", binary=True)], binary=binary
    )
    assert (length is not None) == binary
    request = oip.decode_request(body, None if length is None else str(length), max_elements=MAX)
    assert list(request.inputs) == ["x", "y"]
    np.testing.assert_array_equal(request.inputs["x"], x)
    assert request.inputs["x"].dtype == np.dtype(dtype)
    assert request.outputs == [oip.RequestedOutput("out", True)]


def test_a_response_round_trips_with_binary_and_json_outputs_mixed():
    request = oip.InferenceRequest(
        inputs={}, outputs=[oip.RequestedOutput("a", True), oip.RequestedOutput("b", False)], id="req-7"
    )
    body, length = oip.encode_response("m", "1", {"a": tensor(), "b": tensor((1, 5))}, request)
    document = json.loads(body[:length])
    assert document["id"] == "req-7" and document["model_name"] == "m" and document["model_version"] == "1"
    assert document["outputs"][0]["parameters"] == {"binary_data_size": 24} and "data" in document["outputs"][1]
    answer = oip.decode_response(body, str(length), max_elements=MAX)
    assert answer.model_name == "m"
    outputs = answer.outputs
    np.testing.assert_array_equal(outputs["a"], tensor())
    np.testing.assert_allclose(outputs["b"], tensor((1, 5)))


def test_binary_output_follows_the_request_parameter_unless_an_output_says_otherwise():
    request = oip.InferenceRequest(inputs={}, outputs=[oip.RequestedOutput("json", False)], binary_output=True)
    assert request.wants_binary("json") is False and request.wants_binary("other") is True
    assert oip.InferenceRequest(inputs={}).wants_binary("any") is False


def test_nested_json_data_is_accepted_row_major():
    body = json.dumps({"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]})
    request = oip.decode_request(body.encode(), None, max_elements=MAX)
    np.testing.assert_array_equal(request.inputs["x"], [[1, 2], [3, 4]])


FP32_4 = np.arange(4, dtype=np.float32).tobytes()


@pytest.mark.parametrize(
    "body, header_length, words",
    [
        (b"{not json", None, "not valid JSON"),
        (b"\xff\xfe", None, "not valid JSON"),
        (b"[" * 100_000, None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b"{}", None, "inputs must be a non-empty list"),
        (json.dumps({"inputs": [1]}).encode(), None, "inputs[0] must be an object"),
        (json.dumps({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}).encode(), None, "name"),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}]}).encode(),
            None,
            "datatype 'FP8'",
        ),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": ["FP32"], "shape": [1], "data": [1]}]}).encode(),
            None,
            "datatype",
        ),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}).encode(),
            None,
            "BYTES",
        ),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}).encode(),
            None,
            "non-negative",
        ),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [True], "data": [1]}]}).encode(),
            None,
            "non-negative",
        ),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": "2", "data": [1]}]}).encode(),
            None,
            "shape",
        ),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]}).encode(),
            None,
            "holds 1 elements",
        ),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", 1]}]}).encode(),
            None,
            "not FP32",
        ),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], 2]}]}).encode(),
            None,
            "not FP32",
        ),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [10**30]}]}).encode(),
            None,
            "not INT8",
        ),
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}).encode(), None, "neither data nor"),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [10**7], "data": []}]}).encode(),
            None,
            "more than",
        ),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}] * 2}).encode(),
            None,
            "twice",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": {}}
            ).encode(),
            None,
            "outputs must be a list",
        ),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "id": 5}).encode(),
            None,
            "id must be a string",
        ),
        (
            json.dumps(
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                    "parameters": {"binary_data_output": "yes"},
                }
            ).encode(),
            None,
            "binary_data_output",
        ),
        (
            json.dumps(
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                    "outputs": [{"name": "o", "parameters": {"classification": 3}}],
                }
            ).encode(),
            None,
            "classification",
        ),
    ],
)
def test_malformed_json_requests_are_400_saying_what(body, header_length, words):
    with pytest.raises(BadRequest) as refused:
        oip.decode_request(body, header_length, max_elements=MAX)
    assert refused.value.status == 400 and refused.value.code == oip.CODE
    assert words in refused.value.message, refused.value.message


def x_binary(size=16, shape=(4,)):
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(shape), "parameters": {"binary_data_size": size}}]
    }


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: binary_body(x_binary(), FP32_4[:-1]), "run past the end"),  # truncated binary section
        (lambda: binary_body(x_binary(), FP32_4 + b"x"), "binary data has 17 bytes but the inputs declare 16"),
        (lambda: binary_body(x_binary(size=12), FP32_4[:12]), "12 bytes of data for 4 FP32 elements"),
        (lambda: binary_body(x_binary(size=-4), FP32_4), "non-negative integer"),
        (lambda: (binary_body(x_binary(), FP32_4)[0], "9999"), "past the end of the"),  # header length past the body
        (lambda: (binary_body(x_binary(), FP32_4)[0], "12abc"), "byte count"),
        (lambda: (binary_body(x_binary(), FP32_4)[0], "10"), "not valid JSON"),  # length cuts the JSON short
        (lambda: binary_body({"inputs": [{**x_binary()["inputs"][0], "data": [1, 2, 3, 4]}]}, FP32_4), "both data and"),
    ],
)
def test_malformed_binary_requests_are_400_saying_what(make, words):
    body, header_length = make()
    with pytest.raises(BadRequest) as refused:
        oip.decode_request(body, header_length, max_elements=MAX)
    assert words in refused.value.message, refused.value.message


def test_every_prefix_and_byte_flip_of_a_binary_request_is_a_request_or_a_400():
    body, length = oip.encode_request({"x": tensor((2, 2))}, [oip.RequestedOutput("o", True)])
    bodies = [body[:n] for n in range(len(body))]
    bodies += [body[:i] + bytes([body[i] ^ 0x55]) + body[i + 1 :] for i in range(len(body))]
    for candidate in bodies:
        for header_length in (str(length), None):
            with contextlib.suppress(BadRequest):
                oip.decode_request(candidate, header_length, max_elements=MAX)


def test_an_error_answer_is_read_as_one():
    with pytest.raises(BadRequest, match="server answered an error: no such model"):
        oip.decode_response(b'{"error": "no such model"}', None, max_elements=MAX)


@pytest.mark.parametrize("header_length", ["\u00b2", "\u0663", "\uff11\uff16", "9" * 5000, "+16", "-1", " 16", ""])
def test_the_header_length_must_be_ascii_digits(header_length):
    """``str.isdigit()`` says yes to "²", "٣" and "１６", which ``int()`` then rejects or reads."""
    body, _ = binary_body(x_binary(), FP32_4)
    with pytest.raises(BadRequest) as refused:
        oip.decode_request(body, header_length, max_elements=MAX)
    assert refused.value.code == oip.CODE and "ASCII digits" in refused.value.message


@pytest.mark.parametrize("shape", [[2**62, 2**62, 0], [0, 2**40], [MAX + 1, 0]])
@pytest.mark.parametrize("binary", [True, False])
def test_an_empty_shape_whose_other_dimensions_exceed_the_bound_is_a_400(shape, binary):
    tensor = {"name": "x", "datatype": "FP32", "shape": shape}
    if binary:
        body, length = binary_body({"inputs": [{**tensor, "parameters": {"binary_data_size": 0}}]})
    else:
        body, length = json.dumps({"inputs": [{**tensor, "data": []}]}).encode(), None
    with pytest.raises(BadRequest) as refused:
        oip.decode_request(body, length, max_elements=MAX)
    assert refused.value.code == oip.CODE and "is empty but its other dimensions exceed" in refused.value.message


def test_an_empty_shape_within_the_bound_decodes():
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 5], "data": []}]}).encode()
    assert oip.decode_request(body, None, max_elements=MAX).inputs["x"].shape == (0, 5)


def test_the_json_part_is_counted_against_its_budget_before_parsing():
    """The default budget: ``max_elements`` values however nested; a body of empty lists is over it."""
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [[]] * 2000}]}).encode()
    with pytest.raises(BadRequest, match="more lists") as refused:
        oip.decode_request(body, None, max_elements=100)
    assert refused.value.code == oip.CODE
    tight = codec.JsonBudget.for_shape((2, 2))
    fits = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]})
    assert oip.decode_request(fits.encode(), None, max_elements=4, json_budget=tight).inputs["x"].shape == (2, 2)


def test_a_response_is_counted_against_its_budget_too():
    body = b'{"outputs": [' + b"[]," * 5000 + b"[]]}"
    with pytest.raises(BadRequest, match="more lists"):
        oip.decode_response(body, None, max_elements=1000)


def test_non_finite_json_values_are_written_as_null_never_bare_nan():
    x = np.array([[1.5, np.nan], [np.inf, -np.inf]], np.float32)
    request = oip.InferenceRequest(inputs={}, outputs=[oip.RequestedOutput("o", False)])
    body, length = oip.encode_response("m", "1", {"o": x}, request)
    assert length is None
    document = json.loads(body, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert document["outputs"][0]["data"] == [1.5, None, None, None]
    back = oip.decode_response(body, None, max_elements=MAX).outputs["o"]
    assert back[0, 0] == 1.5 and np.isnan(back[0, 1]) and np.isnan(back[1]).all()  # null reads back as NaN
    request_body, _ = oip.encode_request({"x": x}, [], binary=False)
    json.loads(request_body, parse_constant=lambda c: pytest.fail(f"bare {c}"))


def test_non_finite_values_keep_their_value_in_binary():
    x = np.array([np.nan, np.inf, -np.inf], np.float32)
    request = oip.InferenceRequest(inputs={}, outputs=[oip.RequestedOutput("o", True)])
    body, length = oip.encode_response("m", "1", {"o": x}, request)
    np.testing.assert_array_equal(oip.decode_response(body, str(length), max_elements=MAX).outputs["o"], x)


@pytest.mark.parametrize(
    "body, header_length",
    [
        (b'{"id": "\xff", "inputs": []}', None),
        (b"[" * 5000 + b"]" * 5000, None),
        (b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [' + b"7" * 5000 + b"]}]}", None),
        (json.dumps({"inputs": [{"name": "x", "datatype": {"a": 1}, "shape": [1], "data": [1]}]}).encode(), None),
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [None], "data": [1]}]}).encode(), None),
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [{}]}]}).encode(), None),
        (json.dumps({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [-1]}]}).encode(), None),
        (binary_body(x_binary(), FP32_4)[0], "\u00b2"),
    ],
    ids=["utf8", "deep", "digits", "datatype-object", "shape-null", "data-object", "uint8-negative", "header"],
)
def test_messages_say_what_was_wrong_never_which_exception_or_a_python_repr(body, header_length):
    with pytest.raises(BadRequest) as refused:
        oip.decode_request(body, header_length, max_elements=MAX)
    message = refused.value.message
    for leak in ("Error", "Exception", "<", "0x", "None", "'dict'", "sys.", "set_int_max"):
        assert leak not in message, message


def test_the_server_answering_an_error_object_is_shown_as_json():
    with pytest.raises(BadRequest) as refused:
        oip.decode_response(b'{"error": {"code": 7}}', None, max_elements=MAX)
    assert '{"code": 7}' in refused.value.message
