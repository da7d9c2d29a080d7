"""The services in-process: test settings, and the three apps wired together without a network."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
from collections.abc import AsyncIterator

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ml_pipeline.settings import PipelineSettings


def free_port() -> int:
    """A localhost port nobody listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_settings(**overrides) -> PipelineSettings:
    """Settings for in-process tests: never the environment's URLs, never an OTLP export."""
    values = {
        "model_backend": "random",
        "model_v2_name": "random-1000",  # the random backend's name over the Open Inference Protocol
        "grpc_port": 0,  # each in-process model's gRPC service on a free port
        "otel_exporter_otlp_endpoint": None,
        "model_url": "http://model.test",
        "preprocess_url": "http://preprocess.test",
    }
    values.update(overrides)
    return PipelineSettings(**values)


class NetworkASGITransport(httpx.ASGITransport):
    """``ASGITransport`` that runs the app in a fresh ``contextvars.Context``, as a real network
    hop would: the downstream app then sees only what the request headers carry (traceparent),
    not the caller's active span."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = super().handle_async_request(request)
        return await asyncio.get_running_loop().create_task(call, context=contextvars.Context())


@contextlib.asynccontextmanager
async def running_chain(
    settings: PipelineSettings, exporter: InMemorySpanExporter | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """postprocess → preprocess → model as three apps in this process (each with its lifespan),
    joined by ``NetworkASGITransport``; yields a client for postprocess."""
    from model.app import create_app as create_model
    from postprocess.app import create_app as create_postprocess
    from preprocess.app import create_app as create_preprocess

    model = create_model(settings, span_exporter=exporter)
    pre = create_preprocess(settings, span_exporter=exporter, model_transport=NetworkASGITransport(app=model))
    post = create_postprocess(settings, span_exporter=exporter, preprocess_transport=NetworkASGITransport(app=pre))
    async with (
        model.router.lifespan_context(model),
        pre.router.lifespan_context(pre),
        post.router.lifespan_context(post),
    ):
        async with httpx.AsyncClient(
            transport=NetworkASGITransport(app=post), base_url="http://postprocess.test"
        ) as client:
            client.apps = {"model": model, "preprocess": pre, "postprocess": post}
            yield client
