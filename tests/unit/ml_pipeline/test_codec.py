import io
import pickle

import numpy as np
import pytest

from ml_pipeline import codec

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
    with pytest.raises(codec.TensorDecodeError, match="object"):
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
    with pytest.raises(codec.TensorDecodeError, match=problem) as info:
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
    with pytest.raises(codec.TensorDecodeError, match=problem) as info:
        codec.decode(body)
    assert info.value.status == 400


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
        except codec.TensorDecodeError as exc:
            assert exc.status == 400
