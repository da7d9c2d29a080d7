"""monolith: the same three stages — preprocess, model, postprocess — behind one HTTP service.

Not part of the chain: the benchmark's one-hop baseline (what do the two extra hops cost?) and,
as ``monolith.pipeline.InProcessPipeline``, its no-HTTP limit. Same code as the services
(``image_to_tensor``, the model backends, ``top_k``), same telemetry, errors and limits.

POST /classify takes a multipart ``file`` and answers the same JSON as postprocess's /finalize.
Run: ``ml-pipeline run monolith`` (port 5004).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI, File, Response, UploadFile
from opentelemetry.sdk.trace.export import SpanExporter

from ml_pipeline.core.wire import SERVER_TIMING_HEADER
from ml_pipeline.observability.stages import StageTimer
from ml_pipeline.observability.tracing import create_tracer_provider, current_trace_id
from ml_pipeline.settings import MonolithSettings, load_settings
from ml_pipeline.web.app import MULTIPART_OVERHEAD_BYTES, build_app, read_upload
from monolith.pipeline import Pipeline
from postprocess.schemas import FinalizeResponse

SERVICE = "monolith"


def create_app(settings: MonolithSettings | None = None, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    settings = settings or load_settings(MonolithSettings)
    provider = create_tracer_provider(SERVICE, settings, span_exporter)
    pipeline = Pipeline(settings)

    @contextlib.asynccontextmanager
    async def resources(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(pipeline.load)
        yield

    async def ready(app: FastAPI) -> tuple[bool, str]:
        return pipeline.ready()

    app = build_app(
        SERVICE,
        settings,
        description=__doc__ or "",
        tracer_provider=provider,
        resources=resources,
        ready=ready,
        max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
    )

    @app.post("/classify", tags=["monolith"], summary="Classify an image in one hop: the top class and the top 5")
    async def classify(
        response: Response, file: UploadFile = File(..., description="JPEG, PNG or WebP image")
    ) -> FinalizeResponse:
        start = time.perf_counter()
        data = await read_upload(file, settings)
        timer = StageTimer(app.state.tracer, SERVICE)
        result = await anyio.to_thread.run_sync(pipeline.classify, data, timer)
        timer.timings_ms[f"{SERVICE}.total"] = (time.perf_counter() - start) * 1000
        response.headers[SERVER_TIMING_HEADER] = timer.header()
        return FinalizeResponse(**result, trace_id=current_trace_id(), timings_ms=timer.timings_ms)

    return app
