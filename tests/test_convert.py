"""The checkpoint reader, the ONNX graph, and the converted model on real photos."""

import os
import pickle
import zipfile

import numpy as np
import onnx
import pytest

from conftest import CAT_CLASSES, CHELSEA_JPG, COFFEE_JPG, ESPRESSO
from ml_pipeline.settings import Settings
from model import convert
from preprocess import imaging


@pytest.fixture(scope="module")
def state_dict():
    return convert.load_state_dict(convert.default_checkpoint())


@pytest.fixture(scope="module")
def onnx_path():
    return convert.ensure_model(Settings().model_path)


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
    with pytest.raises(convert.CheckpointError, match="posix.system|os.system"):
        convert.load_state_dict(bad)
    assert not marker.exists()


def test_zip_checkpoints_and_garbage_are_refused(tmp_path):
    z = tmp_path / "new.pth"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("archive/data.pkl", b"")
    with pytest.raises(convert.CheckpointError, match="zip"):
        convert.load_state_dict(z)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02K\x05.")  # a pickled 5: wrong magic number
    with pytest.raises(convert.CheckpointError, match="magic"):
        convert.load_state_dict(junk)


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
    assert all(onnx.helper.get_attribute_value(a) == b"SAME_UPPER" for n in convs for a in n.attribute if a.name == "auto_pad")
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
    options = OnnxBackend(Settings(model_path=onnx_path))._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == expected
