"""Tensors on the wire: NumPy's ``.npy`` format (``application/x-npy``).

A ``.npy`` body is a short self-describing header (magic, dtype, shape, order) followed by the raw
array bytes, so a ``[1,3,224,224]`` float32 tensor costs 602,240 bytes instead of megabytes of
JSON text, encodes with one copy and decodes with none (``np.frombuffer`` over the body).
Decoding is strict: no pickled objects, and the byte count must match the header exactly.
"""

from __future__ import annotations

import io
import math

import numpy as np

from ml_pipeline.errors import BadRequest

_MAX_HEADER_BYTES = 10_000
MAX_DIMS = 32
MAX_DIM_SIZE = 2**31
_NUMERIC_KINDS = frozenset("biufc")  # bool, ints, floats, complex: no void/structured, strings, datetimes


class TensorDecodeError(BadRequest):
    code = "invalid_tensor"


def encode(array: np.ndarray) -> bytes:
    """Serialize ``array`` to ``.npy`` bytes (object arrays are refused)."""
    if array.dtype.hasobject:
        raise ValueError("object arrays cannot be encoded")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def decode(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Parse ``.npy`` bytes into a read-only array that shares ``data``'s memory.

    Raises ``TensorDecodeError`` (400) for anything that is not a well-formed, complete,
    pickle-free ``.npy`` body of plain numbers — whatever NumPy's header parser raises on it.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=_MAX_HEADER_BYTES)
        elif version in ((2, 0), (3, 0)):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=_MAX_HEADER_BYTES)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except MemoryError:
        raise
    except Exception as exc:  # ValueError, SyntaxError, tokenizer errors, … from the header's literal_eval
        raise TensorDecodeError(f"body is not a .npy tensor: {type(exc).__name__}: {exc}"[:300]) from None
    if dtype.hasobject:
        raise TensorDecodeError("object (pickled) tensors are not accepted")
    if dtype.kind not in _NUMERIC_KINDS or dtype.itemsize == 0:
        raise TensorDecodeError(f"tensor dtype {dtype} is not a plain number type")
    # type(d) is int: a bool passes isinstance(d, int); the size bound: with another dimension 0 the
    # byte count cannot catch a dimension numpy itself refuses.
    if len(shape) > MAX_DIMS or any(type(d) is not int or not 0 <= d <= MAX_DIM_SIZE for d in shape):
        raise TensorDecodeError(
            f"tensor shape {list(shape)[:8]} is not up to {MAX_DIMS} non-negative dimensions (each ≤ 2^31)"
        )
    count = math.prod(shape)
    expected = count * dtype.itemsize
    offset = stream.tell()
    actual = len(data) - offset
    if actual != expected:
        raise TensorDecodeError(f"tensor {dtype}{list(shape)} needs {expected} data bytes, body has {actual}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")
