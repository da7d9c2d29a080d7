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


# Run in the container: the service process's minor page faults so far (/proc/PID/stat, field 10).
# PID 1 is compose's init (tini), which starts the service as its child.
_MINOR_FAULTS = """
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"python\\0-m\\0ml_pipeline\\0run\\0"):
            print(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[7])
    except OSError:  # a process that has just exited (this one's shell, a health check)
        pass
"""


def minor_page_faults(container) -> int:
    """The minor page faults of the service process in ``container`` so far."""
    code, out = container.exec_run(["python3", "-c", _MINOR_FAULTS])
    assert code == 0, out
    (faults,) = out.decode().split()  # exactly one service process
    return int(faults)


def test_preprocess_does_not_fault_its_buffers_in_again_on_every_request(stack, stack_control):
    """Each request allocates and frees ~600 KB buffers (the tensor, its .npy body). With glibc's
    default malloc thresholds the heap they leave was given back and faulted in again by the next
    request: 140-210 minor page faults a request at two or four at a time, 0.56 ms of CPU. The
    preprocess image's MALLOC_* settings keep such buffers in the heap: 0-10 a request."""
    preprocess = stack_control.containers("preprocess")[0]
    photo = COFFEE_JPG.read_bytes()

    def send(n: int) -> None:
        with httpx.Client(timeout=30) as client:
            for _ in range(n):
                answer = client.post(
                    f"{stack['preprocess']}/process",
                    content=photo,
                    headers={"content-type": "application/octet-stream"},
                )
                assert answer.status_code == 200, answer.text[:200]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(send, [5] * 4))  # warm: the first requests' allocations
        before = minor_page_faults(preprocess)
        list(pool.map(send, [20] * 4))
    per_request = (minor_page_faults(preprocess) - before) / 80
    print(f"preprocess: {per_request:.1f} minor page faults per request")
    assert per_request < 40
