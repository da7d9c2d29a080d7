"""Coverage-guided fuzz targets (atheris, i.e. libFuzzer for Python) for the untrusted-bytes parsers.

Each target takes one request body and either finishes (a result, or a 4xx ``PipelineError``: the
client's fault, answered with a clear error) or raises anything else, which libFuzzer reports as a
crash: a 500 that the service would answer for that body.

* ``image``: ``preprocess.imaging.decode`` → ``resize_crop`` → ``normalize`` (what ``/process``
  does with an upload); the result must be a ``[1,3,224,224]`` float32 tensor.
* ``npy``: ``ml_pipeline.core.codec.decode`` (the ``application/x-npy`` body of ``/predict``, and the
  model's answer in postprocess), then ``model.dataplane.validate_batch`` as ``/predict`` does next.
* ``json``: ``ml_pipeline.core.handoff.decode_json`` (the ``application/json`` body of ``/predict``,
  counted against the model's JSON budget as the model does), then ``validate_batch``.
* ``oip``: ``ml_pipeline.core.open_inference.decode_request`` (the body of the Open Inference
  Protocol's ``/v2/models/{name}/infer``), then ``validate_batch`` on its ``input``. An input with a
  newline is a binary-extension body: the JSON before the first newline, the binary data after it
  (the ``Inference-Header-Content-Length`` the JSON's length); without one, a pure JSON body.

Inputs are raw bodies, mutated byte by byte. For ``npy`` and ``json`` an input starting with a NUL
byte is instead read as a list of choices that *build* a body (``npy_from_choices``,
``json_from_choices``): a header with odd dtypes and shapes, JSON nested thousands deep or with huge
numbers. Byte mutation alone rarely gets there (the JSON parser is C code, without coverage).
No real ``.npy`` (``\\x93NUMPY``) or JSON body starts with NUL, so both kinds replay unambiguously.

Run one (libFuzzer flags after the target name; the corpus directory is written to, so pass a copy):

    python tests/fuzz/fuzz_targets.py image -runs=20000 -seed=1 -max_len=4096 /tmp/corpus-image
    python tests/fuzz/fuzz_targets.py npy -max_total_time=600 -dict=tests/fuzz/npy.dict /tmp/corpus-npy

``--replay FILE...`` runs the check on each file without atheris and prints what it raises.

Triage mode, ``FUZZ_TRIAGE_DIR=DIR``: failures are not crashes; the body of the first input of each
distinct failure (exception type + where it was raised) is saved to ``DIR/<target>/`` and fuzzing
goes on, so one long run lists every distinct bug instead of stopping at the first.

Nothing heavy is imported at module import, so tests call the checks directly (``test_fuzz.py``
replays the committed regressions and seeds through ``run_input``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "tests" / "data" / "fuzz" / "seeds"
REGRESSIONS = ROOT / "tests" / "data" / "fuzz" / "regressions"
# Smaller than the service default (40 MP) so that a header claiming a big image costs milliseconds,
# not seconds, per input; the limit's check itself is the same code.
MAX_PIXELS = int(os.environ.get("FUZZ_MAX_PIXELS", "1000000"))
MAX_BATCH = 16  # Settings.max_batch's default
GENERATED = b"\x00"  # first byte of an input that builds its body from choices


# --------------------------------------------------------------------------- checks


def _client_error(exc: BaseException) -> bool:
    from ml_pipeline.core.errors import PipelineError

    return isinstance(exc, PipelineError) and exc.status < 500


def check_image(data: bytes) -> None:
    import numpy as np

    from preprocess import imaging

    try:
        img = imaging.decode(data, MAX_PIXELS)
        img = imaging.resize_crop(img)
        tensor = imaging.normalize(img)
    except Exception as exc:
        if _client_error(exc):
            return
        raise
    if tensor.shape != (1, 3, imaging.CROP_SIZE, imaging.CROP_SIZE) or tensor.dtype != np.float32:
        raise AssertionError(f"decoded image gave a {tensor.dtype}{list(tensor.shape)} tensor")


def _check_batch(decode: Callable[[bytes], object], data: bytes) -> None:
    import numpy as np

    from model.dataplane import validate_batch

    try:
        array = decode(data)
        if not isinstance(array, np.ndarray):
            raise AssertionError(f"decoder returned {type(array).__name__}, not an array")
        if array.dtype.hasobject:
            raise AssertionError("decoder returned an object array")
        validate_batch(array, MAX_BATCH)
    except Exception as exc:
        if _client_error(exc):
            return
        raise


def check_npy(data: bytes) -> None:
    from ml_pipeline.core import codec

    _check_batch(codec.decode, data)


def check_json(data: bytes) -> None:
    from functools import partial

    from ml_pipeline.core import handoff

    _check_batch(partial(handoff.decode_json, budget=_model_json_budget()), data)


def _model_json_budget():
    """What the model counts a JSON body against before parsing it (``Predictor.json_budget``)."""
    from ml_pipeline.core.codec import JsonBudget

    return JsonBudget.for_shape((MAX_BATCH, 3, 224, 224))


def check_oip(data: bytes) -> None:
    from ml_pipeline.core import open_inference
    from model.dataplane import validate_batch

    header, newline, binary = data.partition(b"\n")
    body, header_length = (header + binary, str(len(header))) if newline else (data, None)
    try:
        request = open_inference.decode_request(
            body, header_length, max_elements=MAX_BATCH * 3 * 224 * 224, json_budget=_model_json_budget()
        )
        for name, array in request.inputs.items():
            if not isinstance(name, str) or array.dtype.hasobject:
                raise AssertionError(f"input {name!r}: {array.dtype}")
        if "input" in request.inputs:
            validate_batch(request.inputs["input"], MAX_BATCH)
    except Exception as exc:
        if _client_error(exc):
            return
        raise


# --------------------------------------------------------------------------- structure-aware inputs


class Choices:
    """Decisions read from fuzz bytes, zeros once they run out."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def number(self, nbytes: int) -> int:
        return int.from_bytes(bytes(self.byte() for _ in range(nbytes)), "little")

    def pick(self, options):
        return options[self.byte() % len(options)]


# (descr literal, itemsize): plain numbers, and what a .npy header may also name
_DESCRS = [
    ("'<f4'", 4),
    ("'<f4'", 4),
    ("'<f4'", 4),
    ("'>f4'", 4),
    ("'<f8'", 8),
    ("'<f2'", 2),
    ("'|u1'", 1),
    ("'<i8'", 8),
    ("'|b1'", 1),
    ("'<c8'", 8),
    ("'f4'", 4),
    ("'float32'", 4),
    ("'|V0'", 0),
    ("'|S0'", 0),
    ("'<U0'", 0),
    ("'|V4'", 4),
    ("'|S4'", 4),
    ("'<M8[s]'", 8),
    ("'<m8[D]'", 8),
    ("'|O'", 8),
    ("('<f4', (2,))", 8),
    ("('<f4', (0,))", 0),
    ("[('a', '<f4')]", 4),
    ("[('a', '<f4', (0,))]", 0),
    ("[('a', '<f4'), ('b', '|u1')]", 5),
    ("'<f4 '", 4),
    ("'<x'", 0),
    ("1", 0),
    ("None", 0),
    ("{}", 0),
]
_DIMS = [0, 1, 1, 2, 3, 224, -1, -2, 2**31, 2**32 + 1, 2**63 - 1, 2**63, 2**64, 10**30]


def npy_from_choices(c: Choices) -> bytes:
    """A ``.npy`` body built from choices: header fields odd in every way the format allows."""
    version = c.pick([(1, 0), (1, 0), (2, 0), (3, 0), (4, 0)])
    descr, itemsize = c.pick(_DESCRS)
    fortran = c.pick(["False", "True", "0", "None"])
    ndim = c.pick([0, 1, 2, 3, 4, 4, 5, 33, 70])
    dims = [c.pick(_DIMS) if (b := c.byte()) % 4 == 0 else b % 4 for _ in range(ndim)]
    shape = "(" + ", ".join(map(str, dims)) + ("," if ndim == 1 else "") + ")"
    if c.byte() % 16 == 0:
        shape = c.pick(["[1, 2]", "(1.5,)", "('a',)", "(True,)", "None"])
    fields = [f"'descr': {descr}", f"'fortran_order': {fortran}", f"'shape': {shape}"]
    if c.byte() % 8 == 0:
        fields.append("'extra': 1")
    if c.byte() % 8 == 0:
        fields.pop(c.byte() % len(fields))
    header = ("{" + ", ".join(fields) + ", }").encode("utf-8")
    prefix_len = 10 if version == (1, 0) else 12
    pad = -(prefix_len + len(header) + 1) % 64
    header += b" " * pad + b"\n"
    length = len(header).to_bytes(2 if version == (1, 0) else 4, "little")
    count = 1
    for d in dims:
        count *= d
    expected = count * itemsize
    nbytes = c.pick([expected, expected, expected, expected + 1, max(expected - 1, 0), c.number(2) % 4096])
    nbytes = nbytes if 0 <= nbytes <= 1 << 16 else c.number(2) % 4096
    payload = bytes(c.byte() for _ in range(min(nbytes, 64))) * (nbytes // 64 + 1)
    return b"\x93NUMPY" + bytes(version) + length + header + payload[:nbytes]


_FLOATS = [
    "0.0",
    "-0.0",
    "1.5",
    "-2.5e-3",
    "3.4e38",
    "3.5e38",
    "1e308",
    "1e999",
    "-1e999",
    "5e-324",
    "NaN",
    "Infinity",
    "-Infinity",
    "1E400",
    "0e0",
]


def _json_scalar(c: Choices) -> str:
    kind = c.byte() % 8
    if kind < 3:
        return c.pick(_FLOATS)
    if kind == 3:
        return str(c.number(1) - 128)
    if kind == 4:
        return "1" + "0" * (c.number(2) % 5000)  # up to 10**4999: more digits than float (and int()) allow
    return c.pick(['"1.5"', '""', '"nan"', "true", "false", "null", "{}", '{"a": 1}'])


def _json_value(c: Choices, depth: int) -> str:
    kind = c.byte() % 8
    if depth > 5 or kind < 3:
        return _json_scalar(c)
    if kind == 3:  # nested thousands deep: past the parser's (and numpy's) recursion limits
        n = c.number(2) % 6000
        return "[" * n + _json_scalar(c) + "]" * n
    items = [_json_value(c, depth + 1) for _ in range(c.byte() % 5)]
    return "[" + ", ".join(items) + "]"


def _json_regular(c: Choices, shape: list[int]) -> str:
    if not shape:
        return _json_scalar(c) if c.byte() % 4 == 0 else c.pick(_FLOATS[:5])
    return "[" + ", ".join(_json_regular(c, shape[1:]) for _ in range(shape[0])) + "]"


def json_from_choices(c: Choices) -> bytes:
    """A JSON tensor body built from choices: regular or ragged data, huge or deep values, odd fields."""
    ndim = c.pick([0, 1, 2, 3, 4, 4, 40])
    shape = [c.byte() % 4 for _ in range(ndim)] if ndim < 5 else [1] * ndim
    data = _json_value(c, 0) if c.byte() % 3 == 0 else _json_regular(c, shape if len(shape) < 5 else [])
    shape_text = "[" + ", ".join(map(str, shape)) + "]"
    if c.byte() % 8 == 0:
        shape_text = c.pick(["{}", '"1,2"', "null", "[1.5]", "[-1]", "[" + "1" + "0" * 400 + "]", "[[1]]"])
    dtype = c.pick(['"float32"'] * 5 + ['"float64"', "32", "null", '["float32"]', "{}"])
    fields = [f'"shape": {shape_text}', f'"dtype": {dtype}', f'"data": {data}']
    if c.byte() % 8 == 0:
        fields.pop(c.byte() % len(fields))
    if c.byte() % 16 == 0:
        return c.pick(["[", "", "[1, 2]", '"x"', "1e999"]).encode() + ", ".join(fields).encode()
    return ("{" + ", ".join(fields) + "}").encode()


BUILDERS: dict[str, Callable[[Choices], bytes]] = {"npy": npy_from_choices, "json": json_from_choices}


def body_of(target: str, data: bytes) -> bytes:
    """The request body a fuzz input stands for: itself, or the body its choices build."""
    builder = BUILDERS.get(target)
    if builder is not None and data[:1] == GENERATED:
        return builder(Choices(data[1:]))
    return data


TARGETS: dict[str, Callable[[bytes], None]] = {
    "image": check_image,
    "npy": check_npy,
    "json": check_json,
    "oip": check_oip,
}


def run_input(target: str, data: bytes) -> None:
    """The target's check on one fuzz input (a raw body, or choices that build one)."""
    TARGETS[target](body_of(target, data))


# --------------------------------------------------------------------------- running


def failure_signature(exc: BaseException) -> str:
    """``<Type>-<file>-<line>`` of the innermost frame: one name per distinct bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).stem}-{frames[-1].lineno}" if frames else "unknown"
    return f"{type(exc).__name__}-{where}"


def _short_traceback(exc: BaseException) -> str:
    lines = traceback.format_exception(exc)
    if len(lines) > 40:  # RecursionError
        lines = [*lines[:12], "  ...\n", *lines[-12:]]
    return "".join(lines)


def _triage(target: str, out: Path) -> Callable[[bytes], None]:
    out = out / target
    out.mkdir(parents=True, exist_ok=True)
    seen = {p.name.rsplit("-", 1)[0] for p in out.iterdir()}

    def one_input(data: bytes) -> None:
        body = body_of(target, data)
        try:
            TARGETS[target](body)
        except Exception as exc:
            sig = failure_signature(exc)
            if sig in seen:
                return
            seen.add(sig)
            path = out / f"{sig}-{hashlib.sha1(body).hexdigest()[:12]}"
            path.write_bytes(body)
            sys.stderr.write(f"\n=== new failure {sig}: {path}\n{_short_traceback(exc)}\n")
            sys.stderr.flush()

    return one_input


def replay(target: str, files: list[str]) -> int:
    failed = 0
    for name in files:
        try:
            run_input(target, Path(name).read_bytes())
            print(f"ok      {name}")
        except Exception as exc:
            failed += 1
            print(f"FAILED  {name}: {failure_signature(exc)}: {exc!r}"[:400])
            print(_short_traceback(exc))
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in TARGETS:
        print(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [--replay FILE... | libFuzzer flags and corpus dirs]")
        return 2
    target = argv[1]
    if argv[2:3] == ["--replay"]:
        return replay(target, argv[3:])

    import atheris

    # Coverage feedback from the Python code that parses the input: Pillow's plugins (its C decoders
    # are not instrumented), numpy (the .npy header parser), ours, and the body builders above.
    with atheris.instrument_imports(include=["PIL", "numpy", "ml_pipeline", "preprocess", "model"]):
        import numpy  # noqa: F401
        from PIL import Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin  # noqa: F401

        import model.app  # noqa: F401
        from ml_pipeline.core import (
            codec,  # noqa: F401
        )
        from preprocess import imaging  # noqa: F401
    for func in (npy_from_choices, json_from_choices, _json_value, _json_scalar, _json_regular):
        atheris.instrument_func(func)

    triage_dir = os.environ.get("FUZZ_TRIAGE_DIR")
    one_input = _triage(target, Path(triage_dir)) if triage_dir else (lambda data: run_input(target, data))
    atheris.Setup([argv[0], *argv[2:]], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
