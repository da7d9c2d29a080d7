"""The Open Inference Protocol over gRPC: its messages and the conversions between them and tensors.

The messages come from ``protos/open_inference.binpb``, the compiled descriptor of
``protos/open_inference.proto`` (``bash scripts/protos.sh``), loaded into a descriptor pool of our
own: Triton's client registers the same ``inference.*`` names in protobuf's default pool, and a
process holding both (a test, a tool) would otherwise fail to import the second.

Tensors travel as ``raw_input_contents`` / ``raw_output_contents`` (little-endian bytes, the fast
way); typed ``contents`` lists are read too. Checks and errors are ``ml_pipeline.core.open_inference``'s.

The server parses requests itself (``parse``), not gRPC's deserializer: undecodable bytes are then a
400 (``INVALID_ARGUMENT``) saying so, and the fields are counted on the wire before protobuf builds
an object for each (a few megabytes of empty ``inputs`` would otherwise be millions of messages).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError

from ml_pipeline.core.open_inference import (
    MAX_DIMS,
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    datatype_of,
    invalid,
    tensor_from,
)

SERVICE = "inference.GRPCInferenceService"
DESCRIPTOR_SET = Path(__file__).parent / "protos" / "open_inference.binpb"
# Fields of one request, nested ones included (a packed list is one): a real ModelInferRequest has a
# few dozen. Counted in Python before protobuf parses, so a hostile message costs at most this many steps.
MAX_WIRE_FIELDS = 4096


def _load_messages() -> dict[str, Any]:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    return {name.removeprefix("inference."): cls for name, cls in message_factory.GetMessages(files, pool=pool).items()}


messages = _load_messages()  # "ModelInferRequest" → its class, and so on for every message of the service
# (request, response) message of each method the model serves.
METHODS = {
    method: (messages[f"{method}Request"], messages[f"{method}Response"])
    for method in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelConfig",  # Triton's model configuration extension
        "ModelStatistics",  # Triton's statistics extension
    )
}

# Typed contents field of each datatype (for requests that do not send raw bytes).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def parse(message_type: Any, data: bytes) -> Any:
    """``data`` as a ``message_type`` message, or a 400: bytes that are not one, or that hold more
    than ``MAX_WIRE_FIELDS`` fields (counted before protobuf builds an object for each)."""
    descriptor = message_type.DESCRIPTOR
    _count_fields(memoryview(data), descriptor, [MAX_WIRE_FIELDS], descriptor.name)
    try:
        return message_type.FromString(data)
    except DecodeError:
        raise invalid(f"the request is not a valid {descriptor.name} protobuf message") from None


def _count_fields(data: memoryview, descriptor: Descriptor, left: list[int], name: str) -> None:
    """Walk ``data``'s fields (into the ones that are messages) without building any, taking one
    from ``left[0]`` for each; a 400 when they run out or the bytes are not protobuf's wire format."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos, name)
        left[0] -= 1
        if left[0] < 0:
            raise invalid(f"the request holds more than {MAX_WIRE_FIELDS} protobuf fields: no {name} needs that many")
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(data, pos, name)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            length, pos = _varint(data, pos, name)
            if pos + length > end:
                break
            field = descriptor.fields_by_number.get(number)
            if field is not None and field.message_type is not None:
                _count_fields(data[pos : pos + length], field.message_type, left, name)
            pos += length
        else:  # groups (3, 4) are proto2's, and 6, 7 are no wire type
            break
    if pos != end:
        raise invalid(f"the request is not a valid {name} protobuf message")


def _varint(data: memoryview, pos: int, name: str) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
    raise invalid(f"the request is not a valid {name} protobuf message")


def _tensors(tensors: Any, raw_contents: Any, kind: str, *, max_elements: int) -> list[tuple[str, np.ndarray]]:
    """(name, array) of each input or output tensor message, from its raw bytes (the
    ``raw_*_contents`` entry in the same position) or its typed ``contents``."""
    raw = list(raw_contents)
    if raw and len(raw) != len(tensors):
        raise invalid(f"raw_{kind[:-1]}_contents has {len(raw)} entries for {len(tensors)} {kind}")
    arrays = []
    for i, tensor in enumerate(tensors):
        where = f"{kind}[{i}]"
        if len(tensor.shape) > MAX_DIMS:  # before a list of millions of dimensions is made
            raise invalid(f"{where}: shape must be a list of at most {MAX_DIMS} dimensions")
        shape = list(tensor.shape)
        if raw:
            array = tensor_from(tensor.name, tensor.datatype, shape, raw=raw[i], where=where, max_elements=max_elements)
        else:
            field = _CONTENTS_FIELD.get(tensor.datatype)
            data = getattr(tensor.contents, field) if field else None
            array = tensor_from(tensor.name, tensor.datatype, shape, data=data, where=where, max_elements=max_elements)
        arrays.append((tensor.name, array))
    return arrays


def decode_request(request: Any, *, max_elements: int) -> InferenceRequest:
    """A ``ModelInferRequest`` as the server reads it (the same checks as over HTTP)."""
    if not request.inputs:
        raise invalid("inputs must be a non-empty list")
    inputs: dict[str, np.ndarray] = {}
    for i, (name, array) in enumerate(
        _tensors(request.inputs, request.raw_input_contents, "inputs", max_elements=max_elements)
    ):
        if not name:
            raise invalid(f"inputs[{i}]: name must be a non-empty string")
        if name in inputs:
            raise invalid(f"input {name!r} is given twice")
        inputs[name] = array
    outputs = []
    for i, output in enumerate(request.outputs):
        if "classification" in output.parameters:
            raise invalid(f"outputs[{i}]: the classification extension is not supported; ask postprocess")
        outputs.append(RequestedOutput(output.name, binary=True))
    return InferenceRequest(inputs=inputs, outputs=outputs, id=request.id or None, binary_output=True)


def encode_response(model_name: str, model_version: str, outputs: dict[str, np.ndarray], request_id: str | None) -> Any:
    response = messages["ModelInferResponse"](model_name=model_name, model_version=model_version, id=request_id or "")
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        response.raw_output_contents.append(_little_endian_bytes(array))
    return response


def encode_request(model_name: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> Any:
    """A client's ``ModelInferRequest``: every input as raw bytes, the outputs asked for by name."""
    request = messages["ModelInferRequest"](model_name=model_name)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        request.raw_input_contents.append(_little_endian_bytes(array))
    for name in outputs:
        request.outputs.add(name=name)
    return request


def decode_response(response: Any, *, max_elements: int) -> InferenceResponse:
    """A client's reading of a ``ModelInferResponse``."""
    outputs = _tensors(response.outputs, response.raw_output_contents, "outputs", max_elements=max_elements)
    return InferenceResponse(response.model_name, dict(outputs))


def model_config(config: dict[str, Any]) -> Any:
    """The ``ModelConfigResponse`` of a model configuration as REST answers it (Triton's
    ``config.pbtxt`` as JSON: the message's own field names, enums by name). Read field by field, so
    both protocols answer the same content; a key the message lacks is an error, not dropped."""
    response = messages["ModelConfigResponse"]()
    json_format.ParseDict(config, response.config)
    return response


def model_statistics(report: dict[str, Any]) -> Any:
    """The ``ModelStatisticsResponse`` of Triton's statistics JSON (``$stats_model_response``), as
    REST answers it: the same content, field by field."""
    return json_format.ParseDict(report, messages["ModelStatisticsResponse"]())


def _little_endian_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
