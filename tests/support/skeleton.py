"""A tiny app on the services' own skeleton (``build_app``), for admission control, deadlines and
body limits: ``/work`` waits until released, ``/upload`` and ``/file`` read a body."""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import httpx
from fastapi import FastAPI, Request, UploadFile

from ml_pipeline.core import deadline
from ml_pipeline.observability import metrics
from ml_pipeline.observability.tracing import create_tracer_provider
from ml_pipeline.web.app import build_app
from support.apps import make_settings


def slow_app(
    service: str = "adm", *, hold: asyncio.Event | None = None, max_body: int = 1_000_000, **overrides
) -> FastAPI:
    """An app on the services' skeleton whose ``/work`` waits for ``hold`` (or answers at once)
    and reports the deadline it saw; ``/upload`` reads a body."""
    settings = make_settings(**overrides)

    @contextlib.asynccontextmanager
    async def resources(_):
        yield

    async def ready(_):
        return True, "ok"

    app = build_app(
        service,
        settings,
        description="test",
        tracer_provider=create_tracer_provider(service, settings),
        resources=resources,
        ready=ready,
        max_body_bytes=max_body,
    )
    app.state.started = 0

    @app.post("/work")
    async def work() -> dict:
        app.state.started += 1
        if hold is not None:
            await hold.wait()
        return {"remaining_s": deadline.remaining()}

    @app.post("/upload")
    async def upload(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    @app.post("/file")
    async def file(upload: UploadFile) -> dict:
        return {"bytes": len(await upload.read())}

    return app


async def started(app: FastAPI, n: int = 1) -> None:
    """Wait until ``n`` requests have started their work (no fixed sleeps: CI may be busy)."""
    with anyio.fail_after(20):
        while app.state.started < n:
            await anyio.sleep(0.01)


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://adm.test", timeout=10)


def refused(service: str, reason: str) -> float:
    return metrics.REFUSED.labels(service, reason)._value.get()
