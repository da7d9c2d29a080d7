"""Writes the fuzzers' seed corpora under tests/data/fuzz/seeds/ (committed; rerun only to change them).

    python tests/fuzz/make_seeds.py

image/: tiny (32x24) valid JPEG, PNG and WebP files covering the decoder's branches: every allowed
format, the modes decode converts (1, L, P with transparency, RGBA, CMYK JPEG), progressive JPEG,
lossless WebP and an EXIF orientation tag (exif_transpose).
npy/: small valid ``.npy`` bodies: format versions 1.0/2.0/3.0, C and Fortran order, other dtypes
and byte orders, a structured dtype, 0-d and empty arrays.
json/: small valid JSON tensors for ``handoff.decode_json``.
npy/gen-*, json/gen-*: inputs of the structure-aware mode (a NUL byte, then choices that build a
body: ``fuzz_targets.body_of``), so the fuzzer starts with both kinds.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SEEDS = Path(__file__).resolve().parents[1] / "data" / "fuzz" / "seeds"
W, H = 32, 24


def _gradient() -> Image.Image:
    x = np.linspace(0, 255, W, dtype=np.uint8)[None, :].repeat(H, 0)
    y = np.linspace(0, 255, H, dtype=np.uint8)[:, None].repeat(W, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1), "RGB")


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def images() -> dict[str, bytes]:
    rgb = _gradient()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize((W, H)))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "rgb.jpg": _save(rgb, "JPEG", quality=75),
        "progressive.jpg": _save(rgb, "JPEG", quality=50, progressive=True, optimize=True),
        "exif-rotated.jpg": _save(rgb, "JPEG", quality=50, exif=exif),
        "gray.jpg": _save(rgb.convert("L"), "JPEG", quality=50),
        "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG", quality=50),
        "rgb.png": _save(rgb, "PNG"),
        "gray.png": _save(rgb.convert("L"), "PNG"),
        "rgba.png": _save(rgba, "PNG"),
        "palette-transparent.png": _save(pal, "PNG", transparency=0),
        "bilevel.png": _save(rgb.convert("1"), "PNG"),
        "lossy.webp": _save(rgb, "WEBP", quality=50),
        "lossless-alpha.webp": _save(rgba, "WEBP", lossless=True),
    }


def _npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=False)
    return buf.getvalue()


def npys() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    small = rng.standard_normal((1, 3, 2, 2), dtype=np.float32)
    return {
        "f4-nchw.npy": _npy(small),
        "f4-fortran.npy": _npy(np.asfortranarray(small[0, 0])),
        "f4-v2.npy": _npy(small, version=(2, 0)),
        "f4-bigendian.npy": _npy(small.astype(">f4")),
        "f8.npy": _npy(small.astype(np.float64)[0, 0]),
        "u1.npy": _npy(np.arange(6, dtype=np.uint8).reshape(2, 3)),
        "bool.npy": _npy(np.array([True, False])),
        "scalar.npy": _npy(np.array(1.5, dtype=np.float32)),
        "empty.npy": _npy(np.zeros((0, 3), dtype=np.float32)),
        "structured-v3.npy": _npy(np.zeros(2, dtype=[("é", "<f4"), ("b", "<i2", (2,))]), version=(3, 0)),
    }


def jsons() -> dict[str, bytes]:
    def doc(shape, data, dtype="float32"):
        return json.dumps({"shape": shape, "dtype": dtype, "data": data}).encode()

    return {
        "tensor.json": doc([1, 3, 2, 2], np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2).tolist()),
        "vector.json": doc([3], [0.5, -1.25, 3e38]),
        "scalar.json": doc([], 1.0),
        "empty.json": doc([0], []),
    }


def generated(kind: str) -> dict[str, bytes]:
    """Choice bytes (after the NUL) that build valid bodies: starting points for the builders."""
    if kind == "npy":  # version, descr, fortran_order, ndim, dims..., odd shape?, extra key?, drop key?, size
        return {
            "gen-f4-nchw.bin": b"\x00" + bytes([0, 0, 0, 4, 1, 3, 2, 2, 1, 1, 1, 0]) + bytes(range(64)),
            "gen-f4-fortran-v2.bin": b"\x00" + bytes([2, 3, 1, 2, 2, 1, 1, 1, 1, 0]) + bytes(range(64)),
        }
    leaves = [b for i in range(12) for b in (1, i % 5)]  # (not a special scalar, which float)
    return {  # ndim, dims..., regular data?, leaves..., odd shape?, dtype, drop key?, not an array?
        "gen-tensor.bin": b"\x00" + bytes([5, 1, 3, 2, 2, 1, *leaves, 1, 0, 1, 1]),
        "gen-vector.bin": b"\x00" + bytes([1, 3, 1, 1, 2, 1, 2, 1, 2, 1, 0, 1, 1]),
    }


def main() -> None:
    for kind, files in (("image", images()), ("npy", npys() | generated("npy")), ("json", jsons() | generated("json"))):
        folder = SEEDS / kind
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
            print(f"{folder / name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
