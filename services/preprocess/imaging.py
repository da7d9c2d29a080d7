"""Image → model tensor, as pure functions (no web framework here).

decode: Pillow, JPEG/PNG/WebP only, size checked from the header before any pixel is decoded,
EXIF orientation applied, any supported mode converted to RGB (alpha is dropped, not composited).
resize: the short side to 256 and a centre crop of 224, done in one resampling pass over just the
cropped region (``resize(box=...)``), which equals resize-then-crop but never materialises a huge
intermediate for extreme aspect ratios.
normalize: ``(x - 127) / 128`` (TF-Lite's convention for EfficientNet-Lite), NCHW float32.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ml_pipeline.errors import BadRequest, PayloadTooLarge, PipelineError, UnsupportedMediaType

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
# Modes Pillow converts to RGB without guessing a scale; 16-bit/float ("I;16", "I", "F") are refused.
SUPPORTED_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
RESIZE_SHORT_SIDE = 256
CROP_SIZE = 224
NORM_MEAN = 127.0
NORM_STD = 128.0


class UnsupportedImageMode(PipelineError):
    status, code = 422, "unsupported_image_mode"


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an upload to an upright RGB image, or raise a 4xx ``PipelineError`` naming the problem."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise UnsupportedMediaType(
                "the upload is not a JPEG, PNG or WebP image", code="unsupported_image_format"
            ) from None
        raise PayloadTooLarge(f"image has too many pixels: {exc}", code="too_many_pixels") from None
    width, height = img.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}", code="too_many_pixels"
        )
    if img.mode not in SUPPORTED_MODES:
        raise UnsupportedImageMode(f"image mode {img.mode!r} is not supported (8-bit greyscale, palette, RGB, RGBA or CMYK)")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadRequest(f"the {img.format} image is truncated or corrupt: {exc}", code="corrupt_image") from None
    ImageOps.exif_transpose(img, in_place=True)  # not in place, it copies every upright image
    return img if img.mode == "RGB" else img.convert("RGB")


def crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """Source region that resize-short-side-to-256 + centre-crop-224 keeps (torchvision's rounding)."""
    if width <= height:
        new_w, new_h = RESIZE_SHORT_SIDE, int(RESIZE_SHORT_SIDE * height / width)
    else:
        new_w, new_h = int(RESIZE_SHORT_SIDE * width / height), RESIZE_SHORT_SIDE
    left = int(round((new_w - CROP_SIZE) / 2.0))
    top = int(round((new_h - CROP_SIZE) / 2.0))
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + CROP_SIZE) * sx, (top + CROP_SIZE) * sy)


def resize_crop(img: Image.Image) -> Image.Image:
    return img.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BILINEAR, box=crop_box(*img.size))


def normalize(img: Image.Image) -> np.ndarray:
    """224x224 RGB image → ``[1,3,224,224]`` float32, ``(x - 127) / 128``."""
    hwc = np.asarray(img, dtype=np.float32)
    hwc -= NORM_MEAN
    hwc /= NORM_STD
    return np.ascontiguousarray(hwc.transpose(2, 0, 1))[np.newaxis]
