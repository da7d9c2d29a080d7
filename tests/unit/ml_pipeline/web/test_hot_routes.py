"""Hot routes (``ml_pipeline.web.app.HotRoute``): the request path's endpoints take the ``Request``
and read their form file and query choices themselves, served without FastAPI's per-request
parameter solving. What a client sees must not change: each test sends the same requests to a hot
route and to the FastAPI route it replaces (``File()``, ``Query()`` of an enum) and compares the
answers."""

from __future__ import annotations

from enum import StrEnum

import httpx
import pytest
from fastapi import FastAPI, File, Query, Request, Response, UploadFile

from ml_pipeline.settings import UploadSettings
from ml_pipeline.web.app import HotRoute, hot_post, query_choice, query_parameter, read_form_file, read_upload
from ml_pipeline.web.envelope import install_error_handlers

pytestmark = pytest.mark.anyio

SETTINGS = UploadSettings(max_upload_bytes=1000)


class Colour(StrEnum):
    red = "red"
    green = "green"


def both_ways() -> FastAPI:
    """``/fastapi`` with FastAPI's parameters, ``/hot`` reading the same things itself. Each answers
    the file's length and the colour, and whether FastAPI's request handler ran."""
    app = FastAPI()
    install_error_handlers(app, "tiny")

    def answer(request: Request, data: bytes, colour: Colour) -> Response:
        handled_by_fastapi = "fastapi_function_astack" in request.scope
        return Response(f"{len(data)} {colour} {handled_by_fastapi}")

    @app.post("/fastapi")
    async def with_parameters(
        request: Request, file: UploadFile = File(...), colour: Colour = Query(Colour.red)
    ) -> Response:
        return answer(request, await read_upload(file, SETTINGS), colour)

    @hot_post(app, "/hot", openapi_extra={"parameters": [query_parameter("colour", Colour, "a colour", Colour.red)]})
    async def hot(request: Request) -> Response:
        colour = query_choice(request, "colour", Colour) or Colour.red
        return answer(request, await read_form_file(request, SETTINGS), colour)

    return app


def outcome(r: httpx.Response) -> tuple[int, str]:
    if r.status_code == 200:
        return 200, r.text.rsplit(" ", 1)[0]
    assert r.headers["content-type"] == "application/json", r.text
    return r.status_code, r.json()["error"]["code"]


BOUNDARY = "b0undary"
FORM = f"multipart/form-data; boundary={BOUNDARY}"
REQUESTS = {
    "a file": {"files": {"file": ("a.jpg", b"x" * 10, "image/jpeg")}},
    "two files, the last one kept": {"files": [("file", ("a", b"x" * 3)), ("file", ("b", b"x" * 5))]},
    "an empty file": {"files": {"file": ("a.jpg", b"", "image/jpeg")}},
    "a file over the limit": {"files": {"file": ("a.jpg", b"x" * 1001, "image/jpeg")}},
    "another field": {"files": {"image": ("a.jpg", b"x", "image/jpeg")}},
    "a text field named file": {"data": {"file": "not an upload"}, "files": {"other": ("a", b"x")}},
    "a url-encoded form": {"data": {"file": "not an upload"}},
    "an empty form": {"content": b"", "headers": {"Content-Type": FORM}},
    "a form cut short": {
        "content": f"--{BOUNDARY}\r\nContent-Disposition: form-da".encode(),
        "headers": {"Content-Type": FORM},
    },
    "a form with no boundary": {"content": b"--x\r\n\r\n", "headers": {"Content-Type": "multipart/form-data"}},
    "not a form": {"content": b"\xff\xd8 a jpeg", "headers": {"Content-Type": "image/jpeg"}},
    "no body": {},
}


async def both(query: str, kwargs: dict) -> tuple[httpx.Response, httpx.Response]:
    """The FastAPI route's answer and the hot route's to the same request."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=both_ways()), base_url="http://t") as client:
        return await client.post(f"/fastapi{query}", **kwargs), await client.post(f"/hot{query}", **kwargs)


@pytest.mark.parametrize("kwargs", REQUESTS.values(), ids=REQUESTS.keys())
@pytest.mark.parametrize("query", ["", "?colour=green", "?colour=red&colour=green"])
async def test_a_hot_route_answers_as_fastapis_parameters_do(kwargs, query):
    expected, got = await both(query, kwargs)
    assert outcome(got) == outcome(expected), (got.text, expected.text)
    if expected.status_code == 422:
        assert got.json()["error"]["message"].split(":")[:2] == expected.json()["error"]["message"].split(":")[:2]


@pytest.mark.parametrize("kwargs", REQUESTS.values(), ids=REQUESTS.keys())
@pytest.mark.parametrize("query", ["?colour=blue", "?colour=", "?colour=RED"])
async def test_a_bad_query_choice_is_a_422_whatever_the_body(kwargs, query):
    """Checked before the body is read (FastAPI checks the body first: with both wrong, it may name
    the body instead; a 4xx either way)."""
    expected, got = await both(query, kwargs)
    assert 400 <= expected.status_code < 500
    assert outcome(got) == (422, "invalid_request")
    assert got.json()["error"]["message"] == "invalid request: query.colour: Input should be 'red' or 'green'"


async def test_a_hot_route_is_served_without_fastapis_request_handler():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=both_ways()), base_url="http://t") as client:
        upload = {"file": ("a.jpg", b"x" * 10, "image/jpeg")}
        assert (await client.post("/fastapi", files=upload)).text.endswith("True")
        assert (await client.post("/hot", files=upload)).text.endswith("False")


async def test_a_hot_route_is_described_like_any_route():
    spec = both_ways().openapi()["paths"]["/hot"]["post"]
    (colour,) = spec["parameters"]
    assert colour["in"] == "query" and colour["schema"]["enum"] == ["red", "green"]
    assert colour["schema"]["default"] == "red"


def test_an_endpoint_with_parameters_cannot_be_a_hot_route():
    async def with_a_query(request: Request, colour: str) -> Response:
        return Response()

    with pytest.raises(TypeError, match="takes the request alone"):
        HotRoute("/x", with_a_query, methods=["POST"])
