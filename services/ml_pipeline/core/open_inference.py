"""The Open Inference Protocol (KServe v2) over HTTP, as Triton, KServe and MLServer speak it:
inference requests and responses as JSON, tensors inline (``"data"``) or, with the binary tensor
data extension, as raw little-endian bytes after the JSON (whose length the
``Inference-Header-Content-Length`` header gives), each tensor's byte count in its
``binary_data_size`` parameter.

Pipeline core: json and numpy only. The model's v2 routes decode requests and encode responses
with it; preprocess's ``v2-http`` hand-off encodes requests and decodes responses. Anything a
client can get wrong is a ``BadRequest`` naming what and where (in its own words: never an
exception's name or a Python repr); nothing else escapes.

Bounded before parsed: the JSON part is counted against a ``JsonBudget`` (``ml_pipeline.core.codec``)
before ``json.loads`` builds it, each shape against the elements allowed (zero dimensions
included), and each binary tensor and the binary section as a whole against the bytes there.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml_pipeline.core.codec import JsonBudget, check_json_budget
from ml_pipeline.core.errors import BadRequest, PipelineError

# The protocol's tensor datatypes this server reads and writes (BYTES, strings, is not one of them).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
MAX_DIMS = 32
CODE = "invalid_inference_request"
_BYTE_COUNT = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also takes "²" and "٣"


class ModelNotFound(PipelineError):
    status, code = 404, "model_not_found"


def invalid(message: str) -> BadRequest:
    return BadRequest(message, code=CODE)


def shown(value: object, limit: int = 60) -> str:
    """A client's value in a message: a string quoted, anything else as JSON text; cut short."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."
    text = json.dumps(value, default=lambda _: "?")
    return text if len(text) <= limit else text[:limit] + "..."


def datatype_of(array: np.ndarray) -> str:
    for name, dtype in DATATYPES.items():
        if array.dtype == dtype or array.dtype == dtype.newbyteorder("="):
            return name
    raise ValueError(f"no protocol datatype for {array.dtype}")


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: as the request's ``binary_data_output`` parameter says


@dataclass(frozen=True)
class InferenceRequest:
    inputs: dict[str, np.ndarray]  # in the request's order
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty: every output, the default way
    id: str | None = None
    binary_output: bool = False  # the request-wide ``binary_data_output`` parameter

    def wants_binary(self, output: str) -> bool:
        for requested in self.outputs:
            if requested.name == output and requested.binary is not None:
                return requested.binary
        return self.binary_output


# --------------------------------------------------------------------------- bodies with a binary section


def json_length(body_length: int, header_length: str | None) -> int:
    """How many bytes of a body are JSON: all of it, or what ``Inference-Header-Content-Length`` says
    (all of it when that is not a byte count within the body: ``split_body`` then refuses it)."""
    if header_length is not None and _BYTE_COUNT.fullmatch(header_length):
        return min(int(header_length), body_length)
    return body_length


def split_body(body: bytes, header_length: str | None, budget: JsonBudget) -> tuple[Any, memoryview]:
    """The JSON object and the binary section after it (empty without the extension). The JSON part
    is counted against ``budget`` before it is parsed."""
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        if not _BYTE_COUNT.fullmatch(header_length):
            raise invalid(
                f"Inference-Header-Content-Length must be a byte count in ASCII digits, not {shown(header_length, 40)}"
            )
        length = int(header_length)
        if length > len(body):
            raise invalid(f"Inference-Header-Content-Length {length} is past the end of the {len(body)}-byte body")
        json_part, binary = body[:length], memoryview(body)[length:]
    check_json_budget(json_part, budget, what="the inference header (JSON)", code=CODE)
    try:
        document = json.loads(json_part)
    except json.JSONDecodeError as exc:
        raise invalid(
            f"the inference header is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except UnicodeDecodeError:
        raise invalid("the inference header is not valid JSON: it is not UTF-8 text") from None
    except RecursionError:
        raise invalid("the inference header is not valid JSON: it nests too deeply") from None
    except ValueError:  # a number of thousands of digits, …
        raise invalid("the inference header is not valid JSON: it holds a number too long to read") from None
    if not isinstance(document, dict):
        raise invalid("the inference header must be a JSON object")
    return document, binary


def _binary_size(tensor: dict[str, Any], where: str) -> int | None:
    parameters = tensor.get("parameters", {})
    if not isinstance(parameters, dict):
        raise invalid(f"{where}: parameters must be an object")
    size = parameters.get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0):
        raise invalid(f"{where}: binary_data_size must be a non-negative integer")
    return size


def _shape(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise invalid(f"{where}: shape must be a list of at most {MAX_DIMS} dimensions")
    if not all(type(d) is int and 0 <= d < 2**63 for d in value):
        raise invalid(f"{where}: shape {shown(value)} must hold non-negative integers")
    return tuple(value)


def tensor_from(
    name: str,
    datatype: object,
    shape: object,
    *,
    raw: bytes | memoryview | None = None,
    data: object = None,
    where: str,
    max_elements: int,
) -> np.ndarray:
    """One tensor as the protocol describes it, from its raw little-endian bytes or from its
    elements (``data``: nested or flat lists, JSON's or gRPC's typed contents), checked."""
    where = f"{where} {shown(name)}"
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise invalid(f"{where}: datatype {shown(datatype)} is not one of {', '.join(DATATYPES)}")
    dtype = DATATYPES[datatype]
    dims = _shape(shape, where)
    count = math.prod(dims)
    if count > max_elements:
        raise invalid(f"{where}: shape {list(dims)} holds {count} elements, more than the {max_elements} allowed")
    if math.prod(d for d in dims if d) > max_elements:  # [2**62, 2**62, 0]: empty, yet no array has that shape
        raise invalid(
            f"{where}: shape {list(dims)} is empty but its other dimensions exceed the {max_elements} allowed"
        )
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise invalid(
                f"{where}: {len(raw)} bytes of data for {count} {datatype} elements ({count * dtype.itemsize} bytes)"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(dims)
    if not isinstance(data, (list, str, dict)) and isinstance(data, Sized) and len(data) != count:
        # gRPC's typed contents: flat, so their length is checked before a million are converted.
        raise invalid(f"{where}: data holds {len(data)} elements, shape {list(dims)} needs {count}")
    try:
        with np.errstate(over="ignore"):  # 1e39 as FP32 is infinite, as IEEE says: a finite check is the model's
            array = np.asarray(data, dtype=dtype)
    except OverflowError:
        raise invalid(f"{where}: data is not {datatype}: a value is out of its range") from None
    except (ValueError, TypeError):
        raise invalid(f"{where}: data is not {datatype}: not numbers in regular nested or flat lists") from None
    if array.size != count:
        raise invalid(f"{where}: data holds {array.size} elements, shape {list(dims)} needs {count}")
    return array.reshape(dims)


def _tensor(
    tensor: object, where: str, binary: memoryview, offset: int, *, max_elements: int
) -> tuple[str, np.ndarray, int]:
    """(name, array, bytes of the binary section used) of one JSON input or output object."""
    if not isinstance(tensor, dict):
        raise invalid(f"{where} must be an object")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise invalid(f"{where}: name must be a non-empty string")
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    size = _binary_size(tensor, f"{where} {name!r}")
    if size is None:
        if "data" not in tensor:
            raise invalid(f"{where} {name!r}: has neither data nor a binary_data_size parameter")
        return name, tensor_from(name, datatype, shape, data=tensor["data"], where=where, max_elements=max_elements), 0
    if "data" in tensor:
        raise invalid(f"{where} {name!r}: has both data and binary_data_size")
    if offset + size > len(binary):
        raise invalid(
            f"{where} {name!r}: its {size} bytes run past the end of the binary data ({len(binary) - offset} left)"
        )
    raw = binary[offset : offset + size]
    return name, tensor_from(name, datatype, shape, raw=raw, where=where, max_elements=max_elements), size


def decode_request(
    body: bytes, header_length: str | None, *, max_elements: int, json_budget: JsonBudget | None = None
) -> InferenceRequest:
    """An inference request as the server reads it; ``max_elements`` bounds each tensor, and
    ``json_budget`` its JSON part (by default: ``max_elements`` values in all, however nested)."""
    document, binary = split_body(body, header_length, json_budget or JsonBudget.for_elements(max_elements))
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise invalid("inputs must be a non-empty list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        name, array, used = _tensor(raw, f"inputs[{i}]", binary, offset, max_elements=max_elements)
        if name in inputs:
            raise invalid(f"input {name!r} is given twice")
        inputs[name] = array
        offset += used
    _check_binary_size(binary, offset, "inputs")
    return InferenceRequest(
        inputs=inputs,
        outputs=_requested_outputs(document.get("outputs", [])),
        id=_request_id(document.get("id")),
        binary_output=_binary_output(document.get("parameters", {})),
    )


def _check_binary_size(binary: memoryview, declared: int, kind: str) -> None:
    """The binary section holds exactly the tensors' ``binary_data_size`` bytes, no more, no fewer
    (each tensor was already checked to end within it: this is the guarantee again, as a whole)."""
    if declared != len(binary):
        raise invalid(f"the binary data has {len(binary)} bytes but the {kind} declare {declared}")


def _requested_outputs(raw: object) -> list[RequestedOutput]:
    if not isinstance(raw, list):
        raise invalid("outputs must be a list")
    outputs = []
    for i, output in enumerate(raw):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise invalid(f"outputs[{i}] must be an object with a name")
        parameters = output.get("parameters", {})
        if not isinstance(parameters, dict):
            raise invalid(f"outputs[{i}]: parameters must be an object")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise invalid(f"outputs[{i}]: binary_data must be true or false")
        if "classification" in parameters:
            raise invalid(f"outputs[{i}]: the classification extension is not supported; ask postprocess")
        outputs.append(RequestedOutput(output["name"], binary))
    return outputs


def _request_id(raw: object) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise invalid("id must be a string")
    return raw


def _binary_output(parameters: object) -> bool:
    if not isinstance(parameters, dict):
        raise invalid("parameters must be an object")
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise invalid("binary_data_output must be true or false")
    return binary


# --------------------------------------------------------------------------- encoding


def _encode(
    document: dict[str, Any], tensors_key: str, tensors: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """``document`` with ``tensors`` (name, array, binary?) under ``tensors_key``; the body and
    the JSON part's length when a binary section follows (None: pure JSON)."""
    entries, chunks = [], []
    for name, array, binary in tensors:
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary:
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = _json_values(array)
        entries.append(entry)
    # allow_nan=False: never a bare NaN or Infinity, which no JSON parser but Python's reads.
    header = json.dumps({**document, tensors_key: entries}, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _json_values(array: np.ndarray) -> list[Any]:
    """A tensor's elements as JSON values, flat. JSON has no NaN or infinity: a non-finite float is
    written as ``null`` (as JavaScript's ``JSON.stringify``, orjson and MLServer write it), which
    NumPy reads back as NaN for a float datatype; the exact value (its sign, infinity) travels only
    as binary data (``binary_data_output``)."""
    flat = array.ravel()
    values: list[Any] = flat.tolist()
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():  # rare: the plain list stays the fast path
        return [value if math.isfinite(value) else None for value in values]
    return values


def encode_response(
    model_name: str, model_version: str, outputs: dict[str, np.ndarray], request: InferenceRequest
) -> tuple[bytes, int | None]:
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        document["id"] = request.id
    return _encode(document, "outputs", [(name, array, request.wants_binary(name)) for name, array in outputs.items()])


def encode_request(
    inputs: dict[str, np.ndarray], outputs: list[RequestedOutput], *, binary: bool = True
) -> tuple[bytes, int | None]:
    """A client's request: every input binary (or JSON), the outputs asked for by name."""
    document: dict[str, Any] = {}
    if outputs:
        document["outputs"] = [
            {"name": o.name, **({"parameters": {"binary_data": o.binary}} if o.binary is not None else {})}
            for o in outputs
        ]
    return _encode(document, "inputs", [(name, array, binary) for name, array in inputs.items()])


@dataclass(frozen=True)
class InferenceResponse:
    model_name: str  # which model answered ("" if the server did not say)
    outputs: dict[str, np.ndarray]


def decode_response(body: bytes, header_length: str | None, *, max_elements: int) -> InferenceResponse:
    """A client's reading of a server's answer. A malformed answer is a ``BadRequest`` here too;
    the caller decides whose fault it is (for a client: the server's). The same bounds as a
    request's: the JSON part counted before it is parsed, every tensor's bytes and all of them."""
    document, binary = split_body(body, header_length, JsonBudget.for_elements(max_elements))
    if "error" in document:
        error = document["error"]
        raise invalid(f"the server answered an error: {error[:300] if isinstance(error, str) else shown(error)}")
    raw_outputs = document.get("outputs")
    if not isinstance(raw_outputs, list):
        raise invalid("outputs must be a list")
    outputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, raw in enumerate(raw_outputs):
        name, array, used = _tensor(raw, f"outputs[{i}]", binary, offset, max_elements=max_elements)
        outputs[name] = array
        offset += used
    _check_binary_size(binary, offset, "outputs")
    model_name = document.get("model_name")
    return InferenceResponse(model_name if isinstance(model_name, str) else "", outputs)
