"""What the services tell a stranger (issue 28): no redirect built from the client's ``Host``, no
hostname or Python version in ``/health``, no exception class names in error messages."""

from __future__ import annotations

import platform
import socket

import httpx
import pytest

from support.apps import make_settings, running_chain

pytestmark = pytest.mark.anyio

ROUTES = {"postprocess": "/finalize", "preprocess": "/process", "model": "/predict"}


@pytest.mark.parametrize("service", sorted(ROUTES))
@pytest.mark.parametrize("forwarded", [{}, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}])
async def test_a_trailing_slash_is_a_404_envelope_never_a_redirect_to_the_callers_host(service, forwarded):
    async with running_chain(make_settings()) as client:
        app = client.apps[service]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://evil.example") as c:
            for method in ("POST", "GET"):
                r = await c.request(method, ROUTES[service] + "/", headers={"Host": "evil.example", **forwarded})
                assert r.status_code == 404, (method, r.status_code, r.headers.get("location"))
                assert "location" not in r.headers
                error = r.json()["error"]
                assert (error["code"], error["service"]) == ("not_found", service)
            health = await c.get("/health/", headers={"Host": "evil.example"})
            assert health.status_code == 404 and "location" not in health.headers


@pytest.mark.parametrize("service", sorted(ROUTES))
async def test_health_names_the_service_and_version_but_not_the_host_or_python(service):
    settings = make_settings(service_instance_id="replica-7f3c9a")
    async with running_chain(settings) as client:
        transport = httpx.ASGITransport(app=client.apps[service])
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"status", "service", "version"} and (body["status"], body["service"]) == ("ok", service)
    for secret in ("replica-7f3c9a", socket.gethostname(), platform.python_version()):
        assert secret not in r.text


async def test_an_unexpected_error_does_not_name_the_exception_class():
    from fastapi import FastAPI

    from ml_pipeline.web.envelope import install_error_handlers

    app = FastAPI()
    install_error_handlers(app, "tiny")

    class VerySecretInternalError(Exception):
        pass

    @app.get("/boom")
    async def boom() -> None:
        raise VerySecretInternalError(f"state at {hex(id(app))}")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        r = await c.get("/boom")
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "internal_error"
    assert "VerySecret" not in r.text and "0x" not in r.text


async def test_a_model_answer_without_the_output_says_which_output_is_missing():
    """preprocess over the Open Inference Protocol, against a model answering another output: a 502
    that names the missing output, not the bare ``KeyError`` text (``'logits'``) it used to carry."""
    from preprocess.app import create_app

    def model(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/ready"):
            return httpx.Response(200, json={"ready": True})
        answer = {
            "model_name": "m",
            "outputs": [{"name": "scores", "datatype": "FP32", "shape": [1, 2], "data": [0, 1]}],
        }
        return httpx.Response(200, json=answer)

    settings = make_settings(model_protocol="v2-http")
    app = create_app(settings, model_transport=httpx.MockTransport(model))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            from support.data import COFFEE_JPG

            r = await c.post("/process", files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_gateway" and "has no output 'logits'" in error["message"], error
