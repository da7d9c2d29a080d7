"""preprocess's ``/process`` takes the image two ways: a multipart upload (field ``file``) or the
image itself as the body (any media type but a form's), which is how postprocess forwards uploads.
Both give the same tensor; each way's bad input gets the same clear 4xx."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from support.apps import NetworkASGITransport, make_settings
from support.data import COFFEE_JPG

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def preprocess(**overrides) -> AsyncIterator[httpx.AsyncClient]:
    from preprocess.app import create_app

    app = create_app(make_settings(**overrides))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=NetworkASGITransport(app=app), base_url="http://p") as client:
            yield client


def error_of(r: httpx.Response) -> tuple[int, str]:
    assert r.headers["content-type"] == "application/json", r.text
    return r.status_code, r.json()["error"]["code"]


@pytest.mark.parametrize("content_type", ["application/octet-stream", "image/jpeg", None])
async def test_the_body_itself_gives_the_same_tensor_as_the_upload(content_type):
    photo = COFFEE_JPG.read_bytes()
    headers = {"Content-Type": content_type} if content_type else {}
    async with preprocess() as client:
        uploaded = await client.post("/process?output=tensor", files={"file": ("c.jpg", photo, "image/jpeg")})
        sent = await client.post("/process?output=tensor", content=photo, headers=headers)
    assert uploaded.status_code == sent.status_code == 200, sent.text
    assert sent.content == uploaded.content


async def test_bad_bodies_get_the_same_answers_as_bad_uploads():
    async with preprocess(max_upload_bytes=50_000) as client:
        for content, upload_code in (
            (b"", (400, "empty_file")),
            (b"%PDF-1.4 not an image", (415, "unsupported_image_format")),
            (COFFEE_JPG.read_bytes()[:2000], (400, "corrupt_image")),  # cut short
            (COFFEE_JPG.read_bytes(), (413, "payload_too_large")),  # over the 50 KB limit
        ):
            as_body = await client.post("/process", content=content, headers={"Content-Type": "image/jpeg"})
            as_upload = await client.post("/process", files={"file": ("c.jpg", content, "image/jpeg")})
            assert error_of(as_body) == error_of(as_upload) == upload_code, (content[:10], as_body.text)


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"files": {"image": ("c.jpg", b"\xff\xd8", "image/jpeg")}},  # a form, the wrong field
        {"data": {"file": "not an upload"}},  # a url-encoded form
        {"content": b"", "headers": {"Content-Type": "multipart/form-data; boundary=b"}},
    ],
    ids=["wrong-field", "urlencoded", "empty-form"],
)
async def test_a_form_without_its_file_is_still_the_missing_field(request_kwargs):
    async with preprocess() as client:
        r = await client.post("/process", **request_kwargs)
    assert error_of(r) == (422, "invalid_request")
    assert r.json()["error"]["message"].startswith("invalid request: file: ")


async def test_the_api_description_shows_both_ways():
    async with preprocess() as client:
        spec = (await client.get("/openapi.json")).json()
    content = spec["paths"]["/process"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/octet-stream"}
    assert spec["paths"]["/process"]["post"]["requestBody"]["required"] is True
