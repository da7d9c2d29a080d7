"""Tensors on the wire: NumPy's ``.npy`` format (``application/x-npy``).

A ``.npy`` body is a short self-describing header (magic, dtype, shape, order) followed by the raw
array bytes, so a ``[1,3,224,224]`` float32 tensor costs 602,240 bytes instead of megabytes of
JSON text, encodes with one copy and decodes with none (``np.frombuffer`` over the body).
Decoding is strict: no pickled objects, and the byte count must match the header exactly.

JSON tensors (the hand-off's baseline, the Open Inference Protocol's inline ``data``) are counted
before ``json.loads`` builds them: ``check_json_budget`` refuses a body holding more lists, objects
or values than the largest tensor accepted needs, so a hostile body costs a byte scan, not a
Python object per byte.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from ml_pipeline.core.errors import BadRequest, InvalidTensor

_MAX_HEADER_BYTES = 10_000
MAX_DIMS = 32
MAX_DIM_SIZE = 2**31
MAX_ELEMENTS = 2**31  # of any tensor, counting only its non-zero dimensions (a zero one makes it empty)
_NUMERIC_KINDS = frozenset("biufc")  # bool, ints, floats, complex: no void/structured, strings, datetimes


# The headers of the tensors seen so far, by what they describe (encode) and byte for byte (decode):
# a service sends and receives one or two shapes, and NumPy's header writer and parser (a Python
# literal, read by its tokenizer) cost 15 and 60 µs a tensor. Bounded: past this, new headers
# take the slow path.
_CACHED_HEADERS_MAX = 64
_encoded_headers: dict[tuple[np.dtype, tuple[int, ...]], bytes] = {}
_decoded_headers: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}


def encode(array: np.ndarray) -> bytes:
    """Serialize ``array`` to ``.npy`` bytes (object arrays are refused), with one copy."""
    if array.dtype.hasobject:
        raise ValueError("object arrays cannot be encoded")
    key = (array.dtype, array.shape)  # the dtype itself: its .str is "|V8" for any 8-byte structured one
    header = _encoded_headers.get(key) if array.flags.c_contiguous else None
    if header is None:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, array, allow_pickle=False)
        if not array.flags.c_contiguous:
            return buf.getvalue()
        written = buf.getbuffer()
        header = bytes(written[: len(written) - array.nbytes])
        written.release()
        if len(_encoded_headers) < _CACHED_HEADERS_MAX:
            _encoded_headers[key] = header
    return b"".join((header, array.data))


def decode(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Parse ``.npy`` bytes into a read-only array that shares ``data``'s memory.

    Raises ``InvalidTensor`` (400) for anything that is not a well-formed, complete,
    pickle-free ``.npy`` body of plain numbers — whatever NumPy's header parser raises on it.
    """
    end = _header_end(data)
    known = _decoded_headers.get(bytes(data[:end])) if 0 < end <= _MAX_HEADER_BYTES else None
    if known is not None:
        shape, fortran_order, dtype = known
        return _array(data, shape, fortran_order, dtype, end)
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
    except ValueError:
        raise InvalidTensor("body is not a .npy tensor: it does not begin with the .npy magic bytes") from None
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise InvalidTensor(f"body is not a .npy tensor: format version {version[0]}.{version[1]} is not 1.0-3.0")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        shape, fortran_order, dtype = read_header(stream, max_header_size=_MAX_HEADER_BYTES)
    except MemoryError:
        raise
    except Exception:  # ValueError, SyntaxError, tokenizer errors, … from the header's literal_eval
        # Not numpy's words: they can hold an AST node's repr (a heap address) or Python's internals.
        raise InvalidTensor(
            "body is not a .npy tensor: its header is not a complete {'descr', 'fortran_order', 'shape'} dict"
        ) from None
    if dtype.hasobject:
        raise InvalidTensor("object (pickled) tensors are not accepted")
    if dtype.kind not in _NUMERIC_KINDS or dtype.itemsize == 0:
        raise InvalidTensor(f"tensor dtype {dtype} is not a plain number type")
    # type(d) is int: a bool passes isinstance(d, int); the size bound: with another dimension 0 the
    # byte count cannot catch a dimension numpy itself refuses.
    if len(shape) > MAX_DIMS or any(type(d) is not int or not 0 <= d <= MAX_DIM_SIZE for d in shape):
        raise InvalidTensor(
            f"tensor shape {list(shape)[:8]} is not up to {MAX_DIMS} non-negative dimensions (each ≤ 2^31)"
        )
    # A zero dimension makes the byte count 0 whatever the others say, but numpy still refuses a shape
    # whose other dimensions overflow its sizes: (2**31, 2**31, 0) must be refused here, as a 400.
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise InvalidTensor(
            f"tensor shape {list(shape)} is too large: its non-zero dimensions multiply past 2^31 elements"
        )
    offset = stream.tell()
    if len(_decoded_headers) < _CACHED_HEADERS_MAX:
        _decoded_headers[bytes(data[:offset])] = (shape, fortran_order, dtype)
    return _array(data, shape, fortran_order, dtype, offset)


def _header_end(data: bytes | bytearray | memoryview) -> int:
    """Where the data of a ``.npy`` body would begin, from its header's length field (0: too short)."""
    if len(data) < 12:
        return 0
    if data[6] == 1:  # version 1.0: a 2-byte length, little-endian
        return 10 + data[8] + (data[9] << 8)
    return 12 + int.from_bytes(data[8:12], "little")


def _array(
    data: bytes | bytearray | memoryview, shape: tuple[int, ...], fortran_order: bool, dtype: np.dtype, offset: int
) -> np.ndarray:
    """The array over ``data`` past the header, if the body holds exactly the bytes its header says."""
    count = math.prod(shape)
    expected = count * dtype.itemsize
    actual = len(data) - offset
    if actual != expected:
        raise InvalidTensor(f"tensor {dtype}{list(shape)} needs {expected} data bytes, body has {actual}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


# --------------------------------------------------------------------------- JSON tensors

JSON_SLACK = 1024  # lists, objects and values beyond the tensor's own: the document around it, ids, shapes
_SCAN_CHUNK = 1 << 20  # bytes counted at a time: numpy compares them without the GIL, and a hostile body stops early


@dataclass(frozen=True)
class JsonBudget:
    """What a JSON body may hold at most, counted in its bytes before it is parsed: ``[`` (lists),
    ``,`` (the values after a container's first), ``{`` (objects), ``:`` (their members) and ``"``
    (two a string). ``json.loads`` builds a Python object for each, so bounding them bounds its
    memory and time by the largest tensor's: a tensor is numbers in lists; the rest of a document
    (names, datatypes, parameters) is a few objects and strings. Characters inside strings count
    too: an overestimate, which only a body of strings made of them could notice."""

    values: int
    lists: int
    objects: int = JSON_SLACK
    members: int = JSON_SLACK
    strings: int = JSON_SLACK

    @classmethod
    def for_shape(cls, shape: tuple[int, ...]) -> JsonBudget:
        """Enough for one tensor of ``shape`` written as nested lists (or flat), and the document around it."""
        # A list for every row of every dimension but the last, and the outermost one.
        lists = 1 + sum(math.prod(shape[:i]) for i in range(1, len(shape)))
        return cls(values=math.prod(shape) + lists + JSON_SLACK, lists=lists + JSON_SLACK)

    @classmethod
    def for_elements(cls, elements: int) -> JsonBudget:
        """Enough for tensors of ``elements`` values in all, however they nest (a list per element at most)."""
        return cls(values=2 * elements + JSON_SLACK, lists=elements + JSON_SLACK)


def check_json_budget(body: bytes | memoryview, budget: JsonBudget, *, what: str, code: str) -> None:
    """Refuse (400, ``code``) a JSON body holding more than ``budget`` allows, before it is parsed.
    Counted a chunk at a time by numpy (which lets go of the GIL): a hostile body stops early."""
    view = np.frombuffer(body, dtype=np.uint8)
    bounds = [
        (ord("["), "lists", budget.lists),
        (ord(","), "values", budget.values),
        (ord("{"), "objects", budget.objects),
        (ord(":"), "object members", budget.members),
        (ord('"'), "strings", 2 * budget.strings),
    ]
    counted = [0] * len(bounds)
    for start in range(0, len(view), _SCAN_CHUNK):
        chunk = view[start : start + _SCAN_CHUNK]
        for i, (char, kind, bound) in enumerate(bounds):
            counted[i] += int(np.count_nonzero(chunk == char))
            if counted[i] > bound:
                shown = bound // 2 if kind == "strings" else bound
                raise BadRequest(
                    f"{what} holds more {kind} than the largest tensor accepted needs ({shown}): refused before parsing",
                    code=code,
                )
