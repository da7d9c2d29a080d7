"""Preprocessing numerics against an independent NumPy reference, and every bad-input case."""

import numpy as np
import pytest
from PIL import Image

from conftest import COFFEE_JPG, image_bytes
from ml_pipeline.errors import PipelineError
from preprocess import imaging

BIG = 10**9  # a pixel limit that never triggers


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A random but smooth RGB image (photo-like spectra, so resampling differences stay small)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(height // 8 + 2, width // 8 + 2, 3)).astype(np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def reference_resample(src: np.ndarray, out_size: int, start: float, scale: float, axis: int) -> np.ndarray:
    """Antialiased bilinear (triangle filter) resampling along one axis, written from the
    definition: output pixel i samples centre ``start + (i + 0.5) * scale`` with a triangle of
    half-width ``max(scale, 1)``, clipped at the image edges and normalised."""
    n = src.shape[axis]
    width = max(scale, 1.0)
    weights = np.zeros((out_size, n))
    for i in range(out_size):
        centre = start + (i + 0.5) * scale
        lo, hi = max(int(centre - width + 0.5), 0), min(int(centre + width + 0.5), n)
        taps = np.arange(lo, hi)
        w = np.clip(1 - np.abs((taps + 0.5 - centre) / width), 0, None)
        weights[i, lo:hi] = w / w.sum()
    return np.moveaxis(np.tensordot(weights, np.moveaxis(src, axis, 0), axes=1), 0, axis)


def reference_tensor(rgb: np.ndarray) -> np.ndarray:
    """Short side → 256 (torchvision rounding), centre crop 224, (x-127)/128, NCHW."""
    h, w = rgb.shape[:2]
    new_w, new_h = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    left, top = int(round((new_w - 224) / 2)), int(round((new_h - 224) / 2))
    sx, sy = w / new_w, h / new_h
    x = reference_resample(rgb.astype(np.float64), 224, left * sx, sx, axis=1)
    x = reference_resample(x, 224, top * sy, sy, axis=0)
    return ((x - 127.0) / 128.0).transpose(2, 0, 1)[None]


def pipeline_tensor(data: bytes) -> np.ndarray:
    return imaging.normalize(imaging.resize_crop(imaging.decode(data, BIG)))


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1000, 300), (257, 256), (100, 60), (224, 224)])
def test_tensor_matches_independent_reference(size):
    img = smooth_image(*size)
    got = pipeline_tensor(image_bytes(img))
    want = reference_tensor(np.asarray(img))
    assert got.shape == (1, 3, 224, 224) and got.dtype == np.float32 and got.flags.c_contiguous
    diff = np.abs(got - want) * 128  # in grey levels
    assert diff.max() <= 1.5, diff.max()  # Pillow rounds to 8 bits between its two passes
    assert diff.mean() < 0.45, diff.mean()  # final rounding to 8 bits alone averages 0.25


def test_crop_box_resize_equals_resize_then_crop():
    img = Image.open(COFFEE_JPG).convert("RGB")  # 600x400
    full = img.resize((384, 256), Image.Resampling.BILINEAR)  # short side 256, torchvision rounding
    expected = np.asarray(full.crop((80, 16, 304, 240)), dtype=np.int16)
    got = np.asarray(imaging.resize_crop(img), dtype=np.int16)
    assert np.abs(got - expected).max() <= 1


def test_normalization_and_channel_order():
    img = Image.new("RGB", (300, 300), (255, 0, 127))
    x = pipeline_tensor(image_bytes(img))
    np.testing.assert_allclose(x[0, :, 100, 100], [128 / 128, -127 / 128, 0.0])


@pytest.mark.parametrize(
    "mode, fmt",
    [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
     ("LA", "PNG"), ("1", "PNG"), ("L", "PNG"), ("RGB", "WEBP"), ("RGBA", "WEBP")],
)
def test_supported_modes_and_formats_decode_to_rgb(mode, fmt):
    img = smooth_image(320, 240).convert(mode)
    decoded = imaging.decode(image_bytes(img, fmt), BIG)
    assert decoded.mode == "RGB" and decoded.size == (320, 240)
    assert pipeline_tensor(image_bytes(img, fmt)).shape == (1, 3, 224, 224)


def test_greyscale_becomes_three_equal_channels():
    x = pipeline_tensor(image_bytes(smooth_image(300, 300).convert("L")))
    np.testing.assert_array_equal(x[0, 0], x[0, 1])
    np.testing.assert_array_equal(x[0, 1], x[0, 2])


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (300, 200), (255, 0, 0))
    img.paste((0, 0, 255), (150, 0, 300, 200))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    decoded = imaging.decode(image_bytes(img, "JPEG", exif=exif, quality=95), BIG)
    assert decoded.size == (200, 300)
    top, bottom = decoded.getpixel((100, 30)), decoded.getpixel((100, 270))
    assert top[0] > 200 and top[2] < 60  # red on top after the rotation
    assert bottom[2] > 200 and bottom[0] < 60


def _error(data: bytes, max_pixels: int = BIG) -> PipelineError:
    with pytest.raises(PipelineError) as info:
        imaging.decode(data, max_pixels)
    return info.value


@pytest.mark.parametrize(
    "data, status, code",
    [
        (b"this is not an image", 415, "unsupported_image_format"),
        (image_bytes(Image.new("RGB", (50, 50)), "GIF"), 415, "unsupported_image_format"),
        (image_bytes(Image.new("RGB", (50, 50)), "BMP"), 415, "unsupported_image_format"),
        (COFFEE_JPG.read_bytes()[:30_000], 400, "corrupt_image"),
        (image_bytes(smooth_image(400, 300))[:20_000], 400, "corrupt_image"),
        (image_bytes(Image.fromarray(np.full((64, 64), 40000, np.uint16))), 422, "unsupported_image_mode"),
        (image_bytes(Image.new("F", (64, 64)), "TIFF"), 415, "unsupported_image_format"),
    ],
    ids=["text", "gif", "bmp", "truncated-jpeg", "truncated-png", "16-bit-png", "float-tiff"],
)
def test_bad_images_get_a_clear_4xx(data, status, code):
    err = _error(data)
    assert (err.status, err.code) == (status, code)
    assert err.message


def test_pixel_limit_is_checked_before_decoding():
    data = image_bytes(Image.new("1", (4000, 3000)))  # 12 MP in a few kB
    err = _error(data, max_pixels=10_000_000)
    assert (err.status, err.code) == (413, "too_many_pixels")
    assert "4000x3000" in err.message


def test_decompression_bomb_beyond_pillows_own_limit_is_413():
    data = image_bytes(Image.new("1", (15000, 12000)))  # 180 MP: Pillow itself refuses to open it
    err = _error(data)
    assert (err.status, err.code) == (413, "too_many_pixels")


def test_extreme_aspect_ratio_stays_small_and_fast():
    img = smooth_image(20000, 2)  # a naive resize to short side 256 would be 2.56 M x 256 pixels
    x = pipeline_tensor(image_bytes(img))
    assert x.shape == (1, 3, 224, 224)
