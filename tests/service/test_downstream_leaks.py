"""A downstream that cannot be reached, drops the connection or never answers (issue 28, finding 8):
the answer postprocess gives says what happened in plain words — never the replica's address or
the exception's class — while the log line of the failed request still names the endpoint and
the exception for the operator."""

from __future__ import annotations

import contextlib
import logging
import re

import httpx
import numpy as np
import pytest

from support.apps import NetworkASGITransport, free_port, make_settings
from support.faulty import closed_port, drops_the_connection, never_answers

pytestmark = pytest.mark.anyio

IP_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
EXCEPTION_CLASS = re.compile(r"\b[A-Z][A-Za-z]*(?:Error|Exception|Timeout)\b")  # ConnectError, ReadTimeout, …


def assert_nothing_internal(text: str) -> None:
    assert "http://" not in text and "https://" not in text, text
    assert not IP_ADDRESS.search(text), text
    assert not EXCEPTION_CLASS.search(text), text


@contextlib.asynccontextmanager
async def preprocess_at(url: str, **overrides):
    """postprocess (in-process) whose preprocess is ``url``: a real socket, a real failure."""
    from postprocess.app import create_app

    app = create_app(make_settings(preprocess_url=url, preprocess_max_attempts=1, **overrides))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=NetworkASGITransport(app=app), base_url="http://p") as client:
            yield client


CASES = [
    (closed_port, 503, "downstream_unavailable", "preprocess could not be reached", r"ConnectError"),
    (
        drops_the_connection,
        503,
        "downstream_unavailable",
        "preprocess could not be reached",
        r"(RemoteProtocol|Read)Error",
    ),
    (never_answers, 504, "downstream_timeout", "preprocess did not answer in time", r"TimeoutError|ReadTimeout"),
]


@pytest.fixture(params=["httpx", "aiohttp"])
def http_transport(request) -> str:
    """Each case on both of DOWNSTREAM_HTTP_TRANSPORT's transports: the same answer, the same log."""
    return request.param


@pytest.mark.parametrize(
    "downstream, status, code, words, exception", CASES, ids=["connect", "connection_dropped", "timeout"]
)
async def test_a_failed_hop_answers_in_plain_words_and_logs_the_endpoint(
    caplog, downstream, status, code, words, exception, http_transport
):
    async with downstream() as url:
        async with preprocess_at(url, preprocess_timeout_s=0.5, downstream_http_transport=http_transport) as client:
            with caplog.at_level(logging.WARNING, logger="ml_pipeline.errors"):
                r = await client.post("/finalize", files={"file": ("c.jpg", b"\xff\xd8 not read", "image/jpeg")})
    assert r.status_code == status, r.text
    assert_nothing_internal(r.text)
    error = r.json()["error"]
    assert (error["code"], error["service"]) == (code, "postprocess") and words in error["message"], error
    # The operator's side: the failed request's log line names the replica's URL and the exception.
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "ml_pipeline.errors"]
    assert any(f"POST {url}/process" in line and re.search(exception, line) for line in logged), logged


async def test_readiness_says_preprocess_cannot_be_reached_and_logs_where(caplog, http_transport):
    async with closed_port() as url:
        async with preprocess_at(url, downstream_http_transport=http_transport) as client:
            with caplog.at_level(logging.WARNING):
                r = await client.get("/ready")
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready", r.text
    assert_nothing_internal(r.text)
    assert "preprocess could not be reached" in r.json()["error"]["message"]
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "ml_pipeline.client"]
    assert any(f"GET {url}/ready" in line and "ConnectError" in line for line in logged), logged


async def test_the_grpc_hop_names_neither_the_target_nor_grpcs_connection_details():
    from ml_pipeline.core.errors import DownstreamUnavailable
    from ml_pipeline.observability.tracing import create_tracer_provider
    from preprocess.model_grpc import GrpcModel

    target = f"127.0.0.1:{free_port()}"
    client = GrpcModel(target, timeout_s=2, tracer_provider=create_tracer_provider("p", make_settings()))
    try:
        with pytest.raises(DownstreamUnavailable) as err:
            await client.logits("m", np.zeros((1, 3, 224, 224), np.float32))
    finally:
        await client.aclose()
    assert_nothing_internal(err.value.message)
    assert err.value.message == "the model is unavailable (gRPC UNAVAILABLE)"
    assert target in err.value.detail and "UNAVAILABLE" in err.value.detail  # for the log
