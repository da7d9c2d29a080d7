"""Image → model tensor, as pure functions (no web framework here).

decode: Pillow, JPEG/PNG/WebP only, size checked from the header before any pixel is decoded,
JPEGs decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose short side is still at least 256
(``Image.draft``: a 12-Mpx photo costs about 1/16 of its full decode, and a kilobyte-sized file
claiming 7000x5000 costs 875x625), PNG/WebP (no scaled decoding) held to a lower pixel budget,
EXIF orientation applied, any supported mode converted to RGB (alpha is dropped, not composited).
Every failure on the client's bytes — whatever Pillow raises — is a 4xx ``PipelineError``.
resize: the short side to 256 and a centre crop of 224, done in one resampling pass over just the
cropped region (``resize(box=...)``), which equals resize-then-crop but never materialises a huge
intermediate for extreme aspect ratios.
normalize: ``(x - 127) / 128`` (TF-Lite's convention for EfficientNet-Lite), NCHW float32.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from ml_pipeline.core.errors import BadRequest, PayloadTooLarge, PipelineError, UnsupportedMediaType

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
# Modes Pillow converts to RGB without guessing a scale; 16-bit/float ("I;16", "I", "F") are refused.
SUPPORTED_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
RESIZE_SHORT_SIDE = 256
CROP_SIZE = 224
NORM_MEAN = 127.0
NORM_STD = 128.0

# PNG text/ICC chunks are zlib streams: bound what one may inflate to, and all of them together
# (Pillow's defaults, 1 MiB and 64 MiB, let a 10 MiB upload hold ~64 MiB of inflated metadata).
PngImagePlugin.MAX_TEXT_CHUNK = 256 * 1024
PngImagePlugin.MAX_TEXT_MEMORY = 1024 * 1024
# Our own pixel checks run before Pillow's warning threshold would matter; its warning would
# only repeat them (and catching it per call is not thread-safe). Its hard error still applies.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class UnsupportedImageMode(PipelineError):
    status, code = 422, "unsupported_image_mode"


def _corrupt(fmt: str | None, exc: Exception) -> BadRequest:
    """What is wrong with the bytes, in plain words: never the class Pillow raised, its text (which
    holds reprs of chunk bytes and objects) or its settings."""
    what = f"the {fmt} image" if fmt else "the image"
    text = str(exc).lower()
    if "text chunk" in text or "decompressed data too large" in text:
        problem = "has a metadata chunk (text or ICC profile) that inflates past the size allowed"
    elif "truncated" in text:
        problem = "is truncated: the data ends before the image does"
    else:
        problem = "is corrupt: its data cannot be decoded"
    return BadRequest(f"{what} {problem}", code="corrupt_image")


def decode(data: bytes, max_pixels: int, max_full_decode_pixels: int | None = None) -> Image.Image:
    """Decode an upload to an upright RGB image, or raise a 4xx ``PipelineError`` naming the problem.

    ``max_pixels`` bounds the size any header may claim; ``max_full_decode_pixels`` (default:
    ``max_pixels``) bounds PNG and WebP, which are decoded at full size. JPEGs are decoded
    scaled down to no less than ``RESIZE_SHORT_SIDE`` on the short side.
    """
    full_limit = max_pixels if max_full_decode_pixels is None else min(max_pixels, max_full_decode_pixels)
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            "the upload is not a JPEG, PNG or WebP image", code="unsupported_image_format"
        ) from None
    except Image.DecompressionBombError:  # Pillow's own bound, far above ours: say ours
        raise PayloadTooLarge(
            f"the image's header claims more pixels than the limit of {max_pixels}", code="too_many_pixels"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # a recognised format whose header is broken: any type Pillow raises
        raise _corrupt(None, exc) from None
    try:
        return _load_rgb(img, max_pixels, full_limit)
    except (PipelineError, MemoryError):
        raise
    except Exception as exc:  # truncated/corrupt data, broken EXIF, inflated chunks over the bound, …
        raise _corrupt(img.format, exc) from None


def _load_rgb(img: Image.Image, max_pixels: int, full_limit: int) -> Image.Image:
    width, height = img.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}", code="too_many_pixels"
        )
    if img.mode not in SUPPORTED_MODES:
        raise UnsupportedImageMode(
            f"image mode {img.mode!r} is not supported (8-bit greyscale, palette, RGB, RGBA or CMYK)"
        )
    if img.format == "JPEG":
        img.draft(None, (RESIZE_SHORT_SIDE, RESIZE_SHORT_SIDE))  # smallest DCT scale keeping both sides >= 256
    decoded_w, decoded_h = img.size
    if decoded_w * decoded_h > full_limit:  # PNG/WebP, or a JPEG too narrow to scale down enough
        raise PayloadTooLarge(
            f"{img.format} image is {width}x{height}, which decodes to {decoded_w * decoded_h} pixels; "
            f"the limit is {full_limit}",
            code="too_many_pixels",
        )
    img.load()
    ImageOps.exif_transpose(img, in_place=True)  # not in place, it copies every upright image
    return img if img.mode == "RGB" else img.convert("RGB")


def crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """Source region that resize-short-side-to-256 + centre-crop-224 keeps (torchvision's rounding)."""
    if width <= height:
        new_w, new_h = RESIZE_SHORT_SIDE, int(RESIZE_SHORT_SIDE * height / width)
    else:
        new_w, new_h = int(RESIZE_SHORT_SIDE * width / height), RESIZE_SHORT_SIDE
    left = round((new_w - CROP_SIZE) / 2.0)
    top = round((new_h - CROP_SIZE) / 2.0)
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + CROP_SIZE) * sx, (top + CROP_SIZE) * sy)


def resize_crop(img: Image.Image) -> Image.Image:
    return img.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BILINEAR, box=crop_box(*img.size))


def normalize(img: Image.Image) -> np.ndarray:
    """224x224 RGB image → ``[1,3,224,224]`` float32, ``(x - 127) / 128``.

    The pixels are put in channel order as they become floats (one pass reading 150 KB of bytes),
    then scaled in place: ~0.2 ms. Making floats first and reordering their 600 KB after took
    ~1 ms for the same values (microbenchmark; tests/unit/preprocess/test_imaging.py compares)."""
    tensor = np.empty((1, 3, img.height, img.width), np.float32)
    tensor[0] = np.asarray(img).transpose(2, 0, 1)
    tensor -= NORM_MEAN
    tensor /= NORM_STD
    return tensor
