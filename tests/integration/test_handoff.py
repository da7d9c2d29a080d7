"""The tensor hand-off in the deployed stack: every transport gives the same answer, and 200
concurrent different images through the shared volume each get their own answer, leaving the
volume empty."""

from __future__ import annotations

import concurrent.futures
import io
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

from ml_pipeline.core import codec
from support.data import CHELSEA_JPG, COFFEE_JPG

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared_volume(stack) -> Path:
    path = os.environ.get("STACK_SHARED_DATA_DIR")
    if not path:
        pytest.fail("STACK_SHARED_DATA_DIR is not set: the test run mounts the hand-off volume there")
    return Path(path)


def distinct_images(n: int) -> list[bytes]:
    """``n`` different photos: crops, flips and rotations of the two bundled ones."""
    sources = [Image.open(p).convert("RGB") for p in (COFFEE_JPG, CHELSEA_JPG)]
    out = []
    for i in range(n):
        img = sources[i % 2]
        w, h = img.size
        box = (i * 3 % 60, i * 7 % 40, w - (i * 5 % 50), h - (i * 11 % 45))
        img = img.crop(box)
        if i % 3 == 1:
            img = ImageOps.mirror(img)
        if i % 5 == 2:
            img = img.rotate(90, expand=True)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    assert len(set(out)) == n
    return out


def scores(client: httpx.Client, image: bytes, transport: str) -> np.ndarray:
    r = client.post("/process", params={"transport": transport}, files={"file": ("i.jpg", image, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.headers["x-tensor-transport"] == transport
    return codec.decode(r.content)


def test_every_transport_answers_the_same(stack, shared_volume):
    with httpx.Client(base_url=stack["preprocess"], timeout=60) as client:
        for image in (COFFEE_JPG.read_bytes(), CHELSEA_JPG.read_bytes()):
            answers = {t: scores(client, image, t) for t in ("http", "json", "volume")}
            for transport in ("json", "volume"):
                np.testing.assert_allclose(answers[transport], answers["http"], rtol=1e-5, atol=1e-5)
                assert answers[transport].argmax() == answers["http"].argmax()
    assert os.listdir(shared_volume) == []


def test_200_concurrent_different_images_through_the_volume(stack, shared_volume):
    images = distinct_images(200)
    with (
        httpx.Client(base_url=stack["preprocess"], timeout=120) as client,
        concurrent.futures.ThreadPoolExecutor(8) as pool,
    ):
        expected = list(pool.map(lambda img: scores(client, img, "http"), images))
        through_volume = list(pool.map(lambda img: scores(client, img, "volume"), images))
    for i, (want, got) in enumerate(zip(expected, through_volume, strict=True)):
        assert got.argmax() == want.argmax(), f"image {i} got another image's answer"
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"image {i}")
    assert len({int(s.argmax()) for s in expected}) > 1  # the images really differ in what they show
    assert os.listdir(shared_volume) == []  # every file deleted once its answer was sent


def test_finalize_says_which_handoff_served_it(client):
    answer = client.post("/finalize", files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")}).json()
    protocol = os.environ.get("STACK_MODEL_PROTOCOL", "npy")
    assert answer["transport"] == (os.environ.get("STACK_TRANSPORT", "http") if protocol == "npy" else protocol)


def test_the_shared_volume_is_on_disk_or_in_ram_as_chosen(shared_volume):
    """SHARED_DATA_VOLUME=shared-data-ram selects the tmpfs-backed named volume."""
    mounts = {
        fields[1]: fields[2] for fields in (line.split() for line in Path("/proc/mounts").read_text().splitlines())
    }
    fs_type = mounts[str(shared_volume)]
    if os.environ.get("STACK_SHARED_DATA_VOLUME") == "shared-data-ram":
        assert fs_type == "tmpfs"
    else:
        assert fs_type != "tmpfs"
