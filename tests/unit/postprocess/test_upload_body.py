"""The multipart body postprocess sends preprocess: httpx's own bytes for the same boundary, whatever
the client named its file."""

import httpx
import pytest

from postprocess.dataplane import one_body_upload

NAMES = ["cat.jpg", 'say "cheese".png', "back\\slash.webp", "line\r\nbreak.jpg", "tab\t\x00\x1b.jpg", "çà 猫.jpg"]


@pytest.mark.parametrize("filename", NAMES)
@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream"])
def test_the_body_is_httpx_multipart_for_the_same_boundary(filename, content_type):
    data = bytes(range(256)) * 3
    boundary = "0123456789abcdef0123456789abcdef"
    body, body_type = one_body_upload(filename, data, content_type, boundary=boundary)
    request = httpx.Request(
        "POST",
        "http://preprocess/process",
        files={"file": (filename, data, content_type)},
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert body == request.read()
    assert body_type == request.headers["Content-Type"]


def test_each_body_has_a_fresh_boundary():
    (_, first), (_, second) = (one_body_upload("a.jpg", b"x", "image/jpeg") for _ in range(2))
    assert first != second and first.startswith("multipart/form-data; boundary=")
