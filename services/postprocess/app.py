"""postprocess service: POST /finalize takes an image upload (multipart field ``file``), sends it
through preprocess → model, and turns the model's raw scores into the top class (softmax here).

Run: ``ml-pipeline run postprocess`` (or ``uvicorn --factory postprocess.app:create_app``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request, Response
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import TracerProvider

from ml_pipeline.client.downstream import Downstream, downstream_from_settings, retry_policy_from_settings
from ml_pipeline.core.wire import SERVER_TIMING_HEADER
from ml_pipeline.observability.asgi import distrust_incoming_trace_context
from ml_pipeline.observability.stages import StageTimer
from ml_pipeline.observability.tracing import create_tracer_provider, current_trace_id
from ml_pipeline.settings import PostprocessSettings, load_settings
from ml_pipeline.web.app import (
    INVALID_REQUEST,
    MULTIPART_OVERHEAD_BYTES,
    UPLOAD_FORM,
    build_app,
    hot_post,
    read_form_file,
)
from postprocess.dataplane import SERVICE, Finalizer
from postprocess.schemas import FinalizeResponse


def create_app(
    settings: PostprocessSettings | None = None,
    *,
    span_exporter: SpanExporter | None = None,
    preprocess_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """``preprocess_transport`` lets tests wire the preprocess app in-process."""
    settings = settings or load_settings(PostprocessSettings)
    provider = create_tracer_provider(SERVICE, settings, span_exporter)

    @contextlib.asynccontextmanager
    async def resources(app: FastAPI) -> AsyncIterator[None]:
        preprocess = preprocess_client(settings, provider, preprocess_transport)
        app.state.finalizer = Finalizer(settings, preprocess)
        try:
            yield
        finally:
            await preprocess.aclose()

    async def ready(app: FastAPI) -> tuple[bool, str]:
        return await app.state.finalizer.preprocess.is_ready(settings.readiness_timeout_s)

    app = build_app(
        SERVICE,
        settings,
        description=__doc__ or "",
        tracer_provider=provider,
        resources=resources,
        ready=ready,
        max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
    )
    if not settings.trust_client_trace_context:  # the public edge: callers' trace ids are only links
        distrust_incoming_trace_context(app)

    add_routes(app, settings)
    return app


def preprocess_client(
    settings: PostprocessSettings, provider: TracerProvider, transport: httpx.AsyncBaseTransport | None
) -> Downstream:
    return downstream_from_settings(
        "preprocess",
        settings.preprocess_url,
        settings,
        provider,
        timeout_s=settings.preprocess_timeout_s,
        pass_client_errors=True,  # preprocess rejecting the upload is the client's error
        # Connection failures only (no retry_statuses): nothing was processed yet.
        retry=retry_policy_from_settings("preprocess", settings, settings.preprocess_max_attempts),
        transport=transport,
    )


def add_routes(app: FastAPI, settings: PostprocessSettings) -> None:
    @hot_post(
        app,
        "/finalize",
        tags=["postprocess"],
        summary="Classify an image: the top class and the top 5",
        response_model=FinalizeResponse,
        responses=INVALID_REQUEST,
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": UPLOAD_FORM}}}},
    )
    async def finalize(request: Request) -> Response:
        start = time.perf_counter()
        data = await read_form_file(request, settings)
        timer = StageTimer(app.state.tracer, SERVICE)
        result = await app.state.finalizer.finalize(data, timer)
        timer.timings_ms[f"{SERVICE}.total"] = (time.perf_counter() - start) * 1000
        answer = FinalizeResponse(**result, trace_id=current_trace_id(), timings_ms=timer.timings_ms)
        headers = {SERVER_TIMING_HEADER: timer.header()}
        return Response(answer.model_dump_json(), media_type="application/json", headers=headers)
