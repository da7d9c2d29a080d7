import io
import json
import pickle
import time

import numpy as np
import pytest

from ml_pipeline.core import codec
from ml_pipeline.core.errors import BadRequest, InvalidTensor

DTYPES = [
    "float32",
    "float16",
    "float64",
    "int8",
    "uint8",
    "int16",
    "int32",
    "int64",
    "uint64",
    "bool",
    "complex64",
    ">f4",
    "<i2",
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3, 224, 224), (2, 5), (7,), (), (0, 3)])
def test_round_trip_preserves_dtype_shape_and_values(dtype, shape):
    rng = np.random.default_rng(0)
    original = (rng.standard_normal(shape) * 100).astype(dtype)
    decoded = codec.decode(codec.encode(original))
    assert decoded.dtype == original.dtype
    assert decoded.shape == original.shape
    np.testing.assert_array_equal(decoded, original)


def test_fortran_order_round_trips():
    original = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(codec.decode(codec.encode(original)), original)


def test_encoding_is_compact_binary():
    tensor = np.zeros((1, 3, 224, 224), dtype=np.float32)
    body = codec.encode(tensor)
    assert len(body) - tensor.nbytes <= 128  # only the .npy header on top of the raw bytes


def test_decode_shares_the_body_memory():
    body = codec.encode(np.arange(1000, dtype=np.float32))
    assert not codec.decode(body).flags.writeable  # a view over the body, not a copy


def test_object_arrays_are_refused_both_ways():
    with pytest.raises(ValueError):
        codec.encode(np.array([{"a": 1}], dtype=object))
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidTensor, match="object"):
        codec.decode(buf.getvalue())


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"", "not a .npy"),
        (b"hello world, not a tensor", "not a .npy"),
        (pickle.dumps([1.0, 2.0]), "not a .npy"),
        (codec.encode(np.ones(10, np.float32))[:-4], "needs 40 data bytes, body has 36"),
        (codec.encode(np.ones(10, np.float32)) + b"\0\0\0\0", "needs 40 data bytes, body has 44"),
    ],
)
def test_malformed_bodies_are_400(body, problem):
    with pytest.raises(InvalidTensor, match=problem) as info:
        codec.decode(body)
    assert info.value.status == 400 and info.value.code == "invalid_tensor"


def _npy(header: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy body with a hand-written header dict (what a hostile client can send)."""
    text = header.encode("latin-1")
    pad = (64 - (10 + len(text) + 1) % 64) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes(version) + len(text).to_bytes(2, "little") + text + data


@pytest.mark.parametrize(
    "body, problem",
    [
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,"), "not a .npy"),  # syntax error
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} )"), "not a .npy"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': '''(2,)}"), "not a .npy"),  # tokenizer error
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, -1)}", b"\0" * 4), "non-negative"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 2)}", b""), "non-negative"),
        (_npy("{'descr': '|V0', 'fortran_order': False, 'shape': (5,)}"), "plain number"),
        (_npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}", b"\0" * 4), "plain number"),
        (_npy("{'descr': '<U4', 'fortran_order': False, 'shape': (1,)}", b"\0" * 16), "plain number"),
        (_npy("{'descr': '<M8[s]', 'fortran_order': False, 'shape': (1,)}", b"\0" * 8), "plain number"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (%s)}" % ("1," * 40), b"\0" * 4), "up to 32"),
        (
            _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (%s)}" % ("1," * 70), b"\0" * 4),
            "not a .npy|up to 32",
        ),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", b"\0" * 8, version=(9, 0)), "not a .npy"),
        (_npy("{'descr': '<f4', 'fortran_order': 'yes', 'shape': (2,)}", b"\0" * 8), "not a .npy"),
        (b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 100, "not a .npy"),  # header longer than the body
    ],
    ids=[
        "syntax",
        "trailing",
        "tokenizer",
        "negative-dims-product-1",
        "negative-dim",
        "void-zero-size",
        "structured",
        "unicode",
        "datetime",
        "33-dims",
        "70-dims",
        "version",
        "fortran-not-bool",
        "header-length",
    ],
)
def test_hostile_headers_are_400_whatever_numpy_raises(body, problem):
    with pytest.raises(InvalidTensor, match=problem) as info:
        codec.decode(body)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4),
        np.float64(2.5) * np.ones(()),
        np.array([True, False]),
        np.arange(6, dtype=">f8").reshape(2, 3),
        np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2],  # not contiguous
        np.zeros((0, 3), np.float32),
    ],
    ids=["c-order", "0-d", "bool", "big-endian", "fortran", "strided", "empty"],
)
def test_encoding_is_numpys_own_bytes_first_and_from_the_cached_header(array):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    assert codec.encode(array) == buf.getvalue()
    assert codec.encode(array) == buf.getvalue()  # the second time from the cached header
    decoded = codec.decode(codec.encode(array))
    assert decoded.dtype == array.dtype and np.array_equal(decoded, array)


def test_structured_dtypes_of_one_size_keep_their_own_headers():
    """Their ``dtype.str`` is the same ("|V8"): the header cache tells them apart by the dtype itself."""
    for dtype in ([("a", "<f4"), ("b", "<i4")], [("c", "<i8")], [("a", "<f4"), ("b", "<i4")]):
        array = np.zeros(2, dtype=dtype)
        buf = io.BytesIO()
        np.lib.format.write_array(buf, array, allow_pickle=False)
        assert codec.encode(array) == buf.getvalue(), dtype


def test_a_known_header_still_needs_exactly_its_data_bytes():
    body = codec.encode(np.arange(12, dtype=np.float32).reshape(3, 4))
    codec.decode(body)  # its header is now known
    for wrong in (body[:-1], body + b"\0"):
        with pytest.raises(InvalidTensor, match="needs 48 data bytes"):
            codec.decode(wrong)


def test_the_header_caches_stay_bounded():
    for n in range(1, 3 * codec._CACHED_HEADERS_MAX):
        assert codec.decode(codec.encode(np.zeros((n,), np.float32))).shape == (n,)
    assert len(codec._encoded_headers) <= codec._CACHED_HEADERS_MAX
    assert len(codec._decoded_headers) <= codec._CACHED_HEADERS_MAX


def test_every_prefix_and_byte_flip_of_a_tensor_is_an_array_or_a_400():
    valid = codec.encode(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    rng = np.random.default_rng(7)
    bodies = [valid[:n] for n in range(len(valid))]
    for _ in range(2000):
        mutated = bytearray(valid)
        for i in rng.integers(0, 128, size=rng.integers(1, 4)):  # flips inside the header
            mutated[i] = rng.integers(0, 256)
        bodies.append(bytes(mutated))
    for body in bodies:
        try:
            codec.decode(body)
        except InvalidTensor as exc:
            assert exc.status == 400


@pytest.mark.parametrize("shape", [(2**31, 2**31, 0), (0, 2**31, 2**31), (2**20, 0, 2**20, 2**20)])
def test_an_empty_shape_whose_other_dimensions_overflow_is_a_400_not_numpys_error(shape):
    """The byte count is 0 whatever the other dimensions say; numpy still cannot make the array."""
    body = _npy(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape!r}}}")
    with pytest.raises(InvalidTensor, match="too large") as info:
        codec.decode(body)
    assert info.value.status == 400


def test_an_empty_shape_that_fits_still_decodes():
    assert codec.decode(codec.encode(np.zeros((0, 3, 224, 224), np.float32))).shape == (0, 3, 224, 224)


@pytest.mark.parametrize(
    "body",
    [
        _npy("{'descr': x, 'fortran_order': False, 'shape': (2,)}"),  # literal_eval: "<ast.Name object at 0x…>"
        _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", version=(9, 0)),
        b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 100,
        b"garbage",
    ],
)
def test_header_errors_say_what_is_wrong_not_what_numpy_raised(body):
    with pytest.raises(InvalidTensor) as info:
        codec.decode(body)
    for leak in ("Error", "<", "0x", "ast."):
        assert leak not in info.value.message, info.value.message


# --------------------------------------------------------------------------- JSON budgets


def test_a_json_budget_for_a_shape_fits_that_tensor_nested_and_flat():
    x = np.ones((2, 3, 4, 5), np.float32)
    budget = codec.JsonBudget.for_shape(x.shape)
    assert budget.lists == 1 + 2 + 6 + 24 + codec.JSON_SLACK
    for data in (x.tolist(), x.ravel().tolist()):
        codec.check_json_budget(json.dumps({"data": data}).encode(), budget, what="it", code="c")


@pytest.mark.parametrize(
    "body, kind",
    [
        (b"[" + b"[]," * 2000 + b"[]]", "lists"),
        (b"[" + b"0," * 5000 + b"0]", "values"),
        (b"[" + b"{}," * 2000 + b"{}]", "objects"),
        (b"[" + b'"a",' * 1100 + b"0]", "strings"),
        (b'{"a":{' + b"1:" * 2000 + b"}}", "object members"),
    ],
)
def test_a_json_body_over_its_budget_is_refused_before_it_is_parsed(body, kind):
    budget = codec.JsonBudget(values=4000, lists=1500)
    with pytest.raises(BadRequest) as info:
        codec.check_json_budget(body, budget, what="the body", code="invalid_x")
    assert (info.value.status, info.value.code) == (400, "invalid_x")
    assert f"more {kind}" in info.value.message


def test_a_hostile_json_body_is_refused_after_its_first_chunk():
    """Counted a megabyte at a time: 50 MB of ``[],`` stops after the first, in milliseconds."""
    body = b"[" + b"[]," * 17_000_000 + b"[]]"
    start = time.perf_counter()
    with pytest.raises(BadRequest, match="more lists"):
        codec.check_json_budget(body, codec.JsonBudget.for_shape((16, 3, 224, 224)), what="it", code="c")
    assert time.perf_counter() - start < 0.1
