import io
import pickle

import numpy as np
import pytest

from ml_pipeline import codec

DTYPES = ["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "uint64", "bool", "complex64", ">f4", "<i2"]


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
