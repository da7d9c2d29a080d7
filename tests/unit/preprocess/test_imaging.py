"""Preprocessing numerics against an independent NumPy reference, and every bad-input case."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_pipeline.core.errors import PipelineError
from preprocess import imaging
from support.data import COFFEE_JPG, image_bytes

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
    left, top = round((new_w - 224) / 2), round((new_h - 224) / 2)
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
    [
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("RGB", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("LA", "PNG"),
        ("1", "PNG"),
        ("L", "PNG"),
        ("RGB", "WEBP"),
        ("RGBA", "WEBP"),
    ],
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


# --------------------------------------------------------------------------- hostile images


def huge_claim_jpeg(width: int = 7000, height: int = 5000) -> bytes:
    """About a kilobyte of JPEG whose header claims ``width`` x ``height``: a tiny real JPEG with
    its frame size patched (the data runs out long before the claimed pixels)."""
    data = bytearray(image_bytes(smooth_image(64, 48), "JPEG", quality=50))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_jpegs_decode_at_the_smallest_dct_scale_that_keeps_256():
    for (w, h), expected in [
        ((4000, 3000), (500, 375)),
        ((3000, 4000), (375, 500)),
        ((1200, 800), (600, 400)),
        ((600, 400), (600, 400)),
        ((520, 4000), (260, 2000)),
    ]:
        img = imaging.decode(image_bytes(smooth_image(w, h), "JPEG", quality=90), BIG)
        assert img.size == expected and min(img.size) >= 256


def test_a_scaled_decode_gives_nearly_the_same_tensor():
    """A 12-Mpx photo decoded at 1/8 scale: the 224x224 input differs by under 4 grey levels
    (of 255) on average; measured 2.9 (the model test below checks the label)."""
    data = image_bytes(smooth_image(4000, 3000, seed=3), "JPEG", quality=92)
    scaled = imaging.normalize(imaging.resize_crop(imaging.decode(data, BIG)))
    full = imaging.normalize(imaging.resize_crop(Image.open(io.BytesIO(data)).convert("RGB")))
    assert np.abs(scaled - full).mean() * 128 < 4.0  # mean difference in grey levels (0-255)


@pytest.mark.slow
def test_labels_of_upscaled_photos_survive_the_scaled_decode():
    """Tolerance: the same top-1 class, its probability within 0.05 of the full decode's."""
    from model.backends import load_backend
    from support.apps import make_settings
    from support.data import CHELSEA_JPG

    backend = load_backend(make_settings(model_backend="onnx"))

    def probabilities(x):
        logits = backend.predict(x)[0].astype(np.float64)
        p = np.exp(logits - logits.max())
        return p / p.sum()

    for photo in (COFFEE_JPG, CHELSEA_JPG):
        big = Image.open(photo).convert("RGB")
        big = big.resize((big.width * 6, big.height * 6), Image.Resampling.LANCZOS)  # ~8.6 and ~4.9 Mpx
        data = image_bytes(big, "JPEG", quality=92)
        scaled = probabilities(imaging.normalize(imaging.resize_crop(imaging.decode(data, BIG))))
        full = probabilities(imaging.normalize(imaging.resize_crop(Image.open(io.BytesIO(data)).convert("RGB"))))
        assert scaled.argmax() == full.argmax(), photo.name
        assert abs(scaled.max() - full.max()) < 0.05, (photo.name, scaled.max(), full.max())


def test_a_small_file_claiming_a_huge_jpeg_is_decoded_at_an_eighth():
    data = huge_claim_jpeg()
    assert len(data) < 2000
    assert imaging.decode(data, BIG).size == (875, 625)  # 0.5 Mpx, not 35 (libjpeg pads the missing data)


@pytest.mark.slow
def test_two_dozen_huge_claims_at_once_stay_small_in_memory():
    """24 threads decoding the 7000x5000 claim at once, in a fresh process: its peak RSS grows
    by tens of MB, where full-size decodes would need 24 x 105 MB."""
    import subprocess
    import sys

    script = f"""
import concurrent.futures, resource, sys
sys.path[:0] = {[str(Path(__file__).parent), str(COFFEE_JPG.parent / "tests"), str(COFFEE_JPG.parent / "services")]!r}
from test_imaging import huge_claim_jpeg, imaging, BIG
data = huge_claim_jpeg()
imaging.normalize(imaging.resize_crop(imaging.decode(data, BIG)))  # imports and first-use allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with concurrent.futures.ThreadPoolExecutor(24) as pool:
    list(pool.map(lambda _: imaging.normalize(imaging.resize_crop(imaging.decode(data, BIG))), range(24)))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    grew_mb = int(out.stdout.split()[-1])
    assert grew_mb < 300, f"peak RSS grew by {grew_mb} MB"


def test_png_and_webp_have_the_lower_full_decode_budget_but_jpeg_does_not():
    png = image_bytes(Image.new("RGB", (3000, 2000)))  # 6 Mpx
    err = _error_with(png, max_pixels=BIG, full=5_000_000)
    assert (err.status, err.code) == (413, "too_many_pixels") and "3000x2000" in err.message
    webp = image_bytes(Image.new("RGB", (3000, 2000)), "WEBP")
    assert _error_with(webp, max_pixels=BIG, full=5_000_000).status == 413
    jpeg = image_bytes(smooth_image(3000, 2000), "JPEG")  # decodes at 1/4: 750x500
    assert imaging.decode(jpeg, BIG, 5_000_000).size == (750, 500)
    narrow = image_bytes(smooth_image(12000, 300), "JPEG")  # 1:1 scale only: 3.6 Mpx decoded
    assert _error_with(narrow, max_pixels=BIG, full=3_000_000).status == 413


def _error_with(data: bytes, *, max_pixels: int, full: int) -> PipelineError:
    with pytest.raises(PipelineError) as info:
        imaging.decode(data, max_pixels, full)
    return info.value


def _png_with_chunk(kind: bytes, payload: bytes) -> bytes:
    """A valid small PNG with one extra ancillary chunk inserted before IDAT."""
    import struct
    import zlib

    png = image_bytes(Image.new("RGB", (16, 16), "red"))
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    at = png.index(b"IDAT") - 4
    return png[:at] + chunk + png[at:]


@pytest.mark.parametrize(
    "kind, payload",
    [
        (b"zTXt", b"Comment\0\0" + __import__("zlib").compress(b"a" * 20_000_000)),
        (b"iTXt", b"Comment\0\1\0\0\0" + __import__("zlib").compress(b"b" * 20_000_000)),
        (b"iCCP", b"icc\0\0" + __import__("zlib").compress(b"c" * 20_000_000)),
        (b"eXIf", b"MM\0*" + b"\xff" * 200_000),
    ],
    ids=["ztxt", "itxt", "iccp", "exif"],
)
def test_inflating_metadata_chunks_are_bounded(kind, payload):
    """20 MB of metadata in ~20 kB of PNG: refused or ignored, never inflated in full."""
    import resource

    data = _png_with_chunk(kind, payload)
    assert len(data) < 250_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        img = imaging.decode(data, BIG)
        assert img.size == (16, 16)
    except PipelineError as exc:
        assert exc.status < 500 and exc.code == "corrupt_image"
    grew_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grew_kb < 10_000, f"peak RSS grew by {grew_kb} kB"


def test_prefixes_and_broken_headers_are_4xx_whatever_pillow_raises():
    """The first 100-600 bytes of real files, and headers with bytes flipped (seeded)."""
    photos = {
        "jpeg": COFFEE_JPG.read_bytes(),
        "png": image_bytes(smooth_image(64, 48)),
        "webp": image_bytes(smooth_image(64, 48), "WEBP"),
        "webp-lossless": image_bytes(smooth_image(64, 48), "WEBP", lossless=True),
        "png-palette": image_bytes(smooth_image(64, 48).convert("P")),
    }
    rng = np.random.default_rng(11)
    bodies = []
    for data in photos.values():
        bodies += [data[:n] for n in range(1, min(len(data), 700), 7)]
        for _ in range(300):
            mutated = bytearray(data)
            for i in rng.integers(0, min(len(data), 200), size=rng.integers(1, 5)):
                mutated[i] = rng.integers(0, 256)
            bodies.append(bytes(mutated))
    for body in bodies:
        try:
            imaging.normalize(imaging.resize_crop(imaging.decode(body, BIG, 20_000_000)))
        except PipelineError as exc:
            assert 400 <= exc.status < 500, exc


def test_error_messages_say_what_is_wrong_with_the_image_not_which_class_raised():
    """Issue 28: messages carried exception class names, reprs and Pillow's internal pixel limit.
    Over the same prefixes and flipped bytes as above, plus the metadata bombs and a claim past
    Pillow's own limit, every message is plain: no class name, no address, no Pillow setting."""
    photos = [
        COFFEE_JPG.read_bytes(),
        image_bytes(smooth_image(64, 48)),
        image_bytes(smooth_image(64, 48), "WEBP"),
        image_bytes(smooth_image(64, 48).convert("P")),
    ]
    rng = np.random.default_rng(28)
    bodies = [image_bytes(Image.new("1", (15000, 12000)))]  # past Pillow's 2 x MAX_IMAGE_PIXELS
    bodies += [_png_with_chunk(b"zTXt", b"Comment\0\0" + __import__("zlib").compress(b"a" * 2_000_000))]
    for data in photos:
        bodies += [data[:n] for n in range(1, min(len(data), 700), 5)] + [data[: len(data) // 2]]
        for _ in range(200):
            mutated = bytearray(data)
            for i in rng.integers(0, min(len(data), 300), size=rng.integers(1, 5)):
                mutated[i] = rng.integers(0, 256)
            bodies.append(bytes(mutated))
    leaks = (
        "Error",  # OSError, SyntaxError, ValueError, DecompressionBombError, struct.error, …
        "error:",
        "Exception",
        "0x",
        "<",
        "b'",
        "178956970",  # Pillow's own bomb limit (2 x Image.MAX_IMAGE_PIXELS)
        str(Image.MAX_IMAGE_PIXELS),
        "MAX_",
        "PngImagePlugin",
        "decompression bomb",
    )
    messages: dict[str, set[str]] = {}
    for body in bodies:
        try:
            imaging.decode(body, 50_000_000, 20_000_000)
        except PipelineError as exc:
            messages.setdefault(exc.code, set()).add(exc.message)
    assert {"corrupt_image", "too_many_pixels", "unsupported_image_format"} <= set(messages)
    for code, texts in messages.items():
        for text in texts:
            assert not [leak for leak in leaks if leak in text], (code, text)
    assert any("50000000" in text for text in messages["too_many_pixels"])  # our limit, the one that applies
    assert any("truncated" in text for text in messages["corrupt_image"])


@pytest.mark.parametrize("size", [(224, 224), (31, 17)])
def test_normalize_gives_exactly_the_straightforward_formulas_values(size):
    """Reordered while made floats, then scaled in place: the same float32 values, bit for bit, as
    floats first then ``(x - 127) / 128`` then channels first (the yardstick's way)."""
    rgb = np.random.default_rng(3).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    rgb[0, 0], rgb[0, 1] = (0, 127, 255), (1, 128, 254)  # the ends and the middle of the range
    got = imaging.normalize(Image.fromarray(rgb))
    want = ((np.asarray(rgb, np.float32) - np.float32(127.0)) / np.float32(128.0)).transpose(2, 0, 1)[None]
    assert got.shape == (1, 3, size[1], size[0]) and got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, want)
