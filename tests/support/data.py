"""The repository's paths and the photos the tests classify."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
COFFEE_JPG = ROOT / "test.jpg"  # scikit-image's "coffee" (CC0)
CHELSEA_JPG = ROOT / "tests" / "data" / "chelsea.jpg"  # scikit-image's "chelsea" (CC0)
ESPRESSO = 967
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def image_bytes(img: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_args)
    return buf.getvalue()
