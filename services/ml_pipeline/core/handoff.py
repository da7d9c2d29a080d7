"""The tensor hand-off from preprocess to model, three ways (``TRANSPORT``):

* ``http`` — the tensor as a binary ``.npy`` body (``ml_pipeline.core.codec``): the default.
* ``json`` — the naive encoding, every float as JSON text: kept only as the slow baseline.
* ``volume`` — preprocess writes the ``.npy`` to the shared volume and sends only the file's
  name; the model reads it from the same volume.

Volume rules: a unique file per request, written under a temporary name in the same directory
and renamed atomically (a reader never sees half a file); the reference is a bare generated
name, never a path, resolved strictly inside the root (no ``..``, no separators, no symlinks,
regular files only, size bounded) and its contents checked like any ``.npy`` body. The writer
(preprocess) deletes the file once the model answered or failed — so a retry on another model
replica still finds it — and sweeps files older than a TTL that a crash left behind.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
import uuid
from pathlib import Path

import numpy as np

from ml_pipeline.core import codec
from ml_pipeline.core.errors import BadRequest, InvalidTensor, UnsupportedMediaType
from ml_pipeline.core.wire import (
    JSON_TENSOR_MEDIA_TYPE,
    NPY_MEDIA_TYPE,
    TENSOR_REFERENCE_MEDIA_TYPE,
    TRANSPORT_BY_MEDIA_TYPE,
    HandoffMode,
)

_NAME = re.compile(r"[0-9a-f]{32}\.npy")  # what write_tensor generates, and nothing else
_TMP_PREFIX = ".tmp-"


def mode_of(content_type: str | None) -> HandoffMode:
    """The hand-off a ``/predict`` body's media type says it is (parameters ignored); 415 for any other."""
    media_type = (content_type or "").split(";")[0].strip()
    if media_type not in TRANSPORT_BY_MEDIA_TYPE:
        raise UnsupportedMediaType(
            f"send the tensor as {NPY_MEDIA_TYPE} (or {JSON_TENSOR_MEDIA_TYPE}, or a "
            f"{TENSOR_REFERENCE_MEDIA_TYPE} file reference), not {media_type or 'no content type'}"
        )
    return TRANSPORT_BY_MEDIA_TYPE[media_type]


# --------------------------------------------------------------------------- json


def encode_json(tensor: np.ndarray) -> bytes:
    return json.dumps({"shape": list(tensor.shape), "dtype": str(tensor.dtype), "data": tensor.tolist()}).encode()


def decode_json(body: bytes, budget: codec.JsonBudget | None = None) -> np.ndarray:
    """``{"shape": [...], "dtype": "float32", "data": nested lists}`` → the array, or 400.

    With a ``budget`` (the model passes the largest tensor it accepts), a body holding more lists,
    objects or values than that is refused before ``json.loads`` builds them. Slow (seconds for a
    16-image batch, most of it holding the GIL): callers run it in a worker thread."""
    if budget is not None:
        codec.check_json_budget(body, budget, what="the JSON tensor", code=InvalidTensor.code)
    try:
        doc = json.loads(body)
        shape, dtype, data = doc["shape"], doc["dtype"], doc["data"]
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nested thousands deep
        raise InvalidTensor('send {"shape": [...], "dtype": "float32", "data": [...]} as JSON') from None
    if dtype != "float32":
        raise InvalidTensor(f"tensor dtype {_shown(dtype)} is not float32")
    if not isinstance(shape, list) or len(shape) > codec.MAX_DIMS:
        raise InvalidTensor(f"tensor shape {_shown(shape)} is not a list of up to {codec.MAX_DIMS} sizes")
    try:
        array = np.asarray(data, dtype=np.float32)
    except MemoryError:
        raise
    except Exception:  # ragged, too deep, strings, objects: whatever NumPy raises on it
        raise InvalidTensor("tensor data is not a regular nested list of numbers") from None
    if list(array.shape) != shape:
        raise InvalidTensor(f"tensor data has shape {list(array.shape)}, not the declared {shape}")
    return array


def _shown(value: object) -> str:
    """A client's JSON value as JSON text, cut short: what it sent, never a Python repr."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- volume


def encode_reference(name: str) -> bytes:
    return json.dumps({"name": name}).encode()


def decode_reference(body: bytes) -> str:
    try:
        name = json.loads(body)["name"]
    except (ValueError, KeyError, TypeError):
        raise BadRequest('send the tensor reference as {"name": "<file name>"}', code="invalid_reference") from None
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        # Not a name write_tensor could have made: paths, "..", absolute names, other files.
        raise BadRequest(f"tensor reference {_shown(name)} is not a hand-off file name", code="invalid_reference")
    return name


def write_tensor(root: Path, tensor: np.ndarray) -> tuple[str, int]:
    """Write ``tensor`` as a new file in ``root``; returns its name and size. Atomic: written to
    a temporary name in the same directory, then renamed."""
    name = f"{uuid.uuid4().hex}.npy"
    data = codec.encode(tensor)
    tmp = root / f"{_TMP_PREFIX}{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, root / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return name, len(data)


def read_tensor(root: Path, name: str, max_bytes: int) -> np.ndarray:
    """The tensor in ``root/name``, strictly: a regular file directly inside ``root`` (symlinks
    refused, even ones pointing inside), at most ``max_bytes``, a valid ``.npy``. Else 400."""
    if not _NAME.fullmatch(name):
        raise BadRequest(f"tensor reference {name!r} is not a hand-off file name", code="invalid_reference")
    path = root / name
    try:
        # O_NOFOLLOW: a symlink fails here; O_NONBLOCK: a FIFO cannot hang us before fstat refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadRequest(f"no hand-off file {name!r} in the shared volume", code="invalid_reference") from None
    except OSError as exc:
        raise BadRequest(f"hand-off file {name!r} cannot be opened: {exc.strerror}", code="invalid_reference") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadRequest(f"hand-off file {name!r} is not a regular file", code="invalid_reference")
        if info.st_size > max_bytes:
            raise BadRequest(
                f"hand-off file {name!r} has {info.st_size} bytes, more than {max_bytes}", code="invalid_reference"
            )
        with os.fdopen(fd, "rb") as f:
            fd = -1  # the file object owns it now
            data = f.read(max_bytes + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    return codec.decode(data)


def remove(root: Path, name: str) -> None:
    (root / name).unlink(missing_ok=True)


def sweep(root: Path, ttl_s: float, now: float | None = None) -> int:
    """Delete hand-off files (and temporaries) older than ``ttl_s``: what a crash left behind.
    Touches only names this module writes, and only regular files. Returns how many it removed."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        name = entry.name.removeprefix(_TMP_PREFIX)
        if not _NAME.fullmatch(name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > ttl_s:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            pass  # its reader or another sweeper was first
    return removed
