"""What every service app shares: the FastAPI app with error envelope, telemetry, body-size
limit, ``/health``, ``/ready`` and ``/metrics``, and the multipart upload reader."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from opentelemetry import trace

from ml_pipeline import __version__, metrics
from ml_pipeline.errors import BadRequest, NotReady, PayloadTooLarge, error_response, install_error_handlers
from ml_pipeline.settings import Settings
from ml_pipeline.telemetry import (
    RequestTelemetryMiddleware,
    instrument_app,
    shutdown_tracer_provider,
)

# Multipart framing around an upload: boundaries, part headers. Bodies larger than the upload
# limit plus this are refused from their Content-Length before being read.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

ReadyCheck = Callable[[FastAPI], Awaitable[tuple[bool, str]]]


class BodySizeLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413: at once from Content-Length, or while
    streaming a chunked body (the error is raised into the body parser)."""

    def __init__(self, app, max_bytes: int, service: str):
        self.app = app
        self.max_bytes = max_bytes
        self.service = service

    def _too_large(self, size: str) -> str:
        return f"request body of {size} exceeds the limit of {self.max_bytes} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, PayloadTooLarge.code, self._too_large(f"{int(declared)} bytes"), self.service)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._too_large(f"more than {received} bytes"))
            return message

        await self.app(scope, limited_receive, send)


def build_app(
    service: str,
    settings: Settings,
    *,
    description: str,
    tracer_provider: trace.TracerProvider,
    resources: Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]],
    ready: ReadyCheck,
    max_body_bytes: int,
) -> FastAPI:
    """The skeleton of a service: ``resources(app)`` opens/closes what the service needs (HTTP
    client, model) around its lifetime; ``ready(app)`` answers the readiness probe."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with resources(app):
                yield
        finally:
            shutdown_tracer_provider(tracer_provider)  # flushes what is queued, bounded by the export timeout

    app = FastAPI(title=f"ml-pipeline {service}", version=__version__, description=description, lifespan=lifespan)
    app.state.settings = settings
    app.state.service = service
    app.state.tracer = tracer_provider.get_tracer(f"ml_pipeline.{service}", __version__)

    install_error_handlers(app, service)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes, service=service)
    app.add_middleware(RequestTelemetryMiddleware, service=service)

    @app.get("/health", tags=["probes"], summary="Liveness: the process is up")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "service": service, "instance": settings.service_instance_id, "version": __version__}

    @app.get(
        "/ready",
        tags=["probes"],
        summary="Readiness: able to serve (model loaded and warmed up / downstream ready)",
        responses={503: {"description": "Not ready; the error message says why"}},
    )
    async def readiness() -> JSONResponse:
        ok, reason = await ready(app)
        if not ok:
            raise NotReady(reason)
        return JSONResponse({"status": "ready", "service": service, "detail": reason})

    @app.get("/metrics", tags=["probes"], summary="Prometheus metrics (OpenMetrics with exemplars when asked for)")
    def prometheus_metrics(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    metrics.register_service(service, settings.service_instance_id)
    instrument_app(app, tracer_provider)
    return app


async def read_upload(file: UploadFile, settings: Settings) -> bytes:
    """The uploaded file's bytes, refusing empty and oversized files with a clear error."""
    data = await file.read()
    if not data:
        raise BadRequest("the uploaded file 'file' is empty", code="empty_file")
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"the uploaded file is {len(data)} bytes; the limit is {settings.max_upload_bytes}")
    return data
