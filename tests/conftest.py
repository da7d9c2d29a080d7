"""Shared fixtures: settings, photos, and the three apps wired together in one process."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image

from ml_pipeline.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COFFEE_JPG = ROOT / "test.jpg"  # scikit-image's "coffee" (CC0)
CHELSEA_JPG = ROOT / "tests" / "data" / "chelsea.jpg"  # scikit-image's "chelsea" (CC0)
ESPRESSO = 967
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def coffee_bytes() -> bytes:
    return COFFEE_JPG.read_bytes()


def free_port() -> int:
    """A localhost port nobody listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_bytes(img: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_args)
    return buf.getvalue()


def make_settings(**overrides) -> Settings:
    """Settings for in-process tests: never the environment's URLs, never an OTLP export."""
    values = {
        "model_backend": "random",
        "otel_exporter_otlp_endpoint": None,
        "model_url": "http://model.test",
        "preprocess_url": "http://preprocess.test",
    }
    values.update(overrides)
    return Settings(**values)


class NetworkASGITransport(httpx.ASGITransport):
    """``ASGITransport`` that runs the app in a fresh ``contextvars.Context``, as a real network
    hop would: the downstream app then sees only what the request headers carry (traceparent),
    not the caller's active span."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = super().handle_async_request(request)
        return await asyncio.get_running_loop().create_task(call, context=contextvars.Context())


@contextlib.asynccontextmanager
async def running_chain(
    settings: Settings, exporter: InMemorySpanExporter | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """postprocess → preprocess → model as three apps in this process (each with its lifespan),
    joined by ``NetworkASGITransport``; yields a client for postprocess."""
    from model.app import create_app as create_model
    from postprocess.app import create_app as create_postprocess
    from preprocess.app import create_app as create_preprocess

    model = create_model(settings, span_exporter=exporter)
    pre = create_preprocess(settings, span_exporter=exporter, model_transport=NetworkASGITransport(app=model))
    post = create_postprocess(settings, span_exporter=exporter, preprocess_transport=NetworkASGITransport(app=pre))
    async with model.router.lifespan_context(model), pre.router.lifespan_context(pre), post.router.lifespan_context(post):
        async with httpx.AsyncClient(transport=NetworkASGITransport(app=post), base_url="http://postprocess.test") as client:
            client.apps = {"model": model, "preprocess": pre, "postprocess": post}
            yield client


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def pytest_collection_modifyitems(config, items):
    """The soak first: it measures the stack in a steady state, not one still digesting the fuzzing,
    hostile-input and injected-span tests (their traces and series stay in Jaeger and Prometheus)."""
    items.sort(key=lambda item: 0 if item.path.name == "test_soak.py" and item.path.parent.name == "integration" else 1)
