"""monolith: the same three stages — preprocess, model, postprocess — behind one HTTP service.

Not part of the chain: the benchmark's one-hop baseline (what do the two extra hops cost?) and,
as ``InProcessPipeline``, its no-HTTP limit. Same code as the services (``image_to_tensor``, the
model backends, ``top_k``), same telemetry, errors and limits.

POST /classify takes a multipart ``file`` and answers the same JSON as postprocess's /finalize.
Run: ``ml-pipeline run monolith`` (port 5004).
"""

from __future__ import annotations

import contextlib
import time

import anyio
import numpy as np
from fastapi import FastAPI, File, Response, UploadFile
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter

from ml_pipeline.service import MULTIPART_OVERHEAD_BYTES, build_app, read_upload
from ml_pipeline.settings import Settings
from ml_pipeline.telemetry import SERVER_TIMING_HEADER, StageTimer, create_tracer_provider, current_trace_id
from model.backends import load_backend, readiness
from postprocess.schemas import FinalizeResponse, Prediction, predictions
from postprocess.scoring import load_labels, top_k
from preprocess.app import image_to_tensor

SERVICE = "monolith"


class InProcessPipeline:
    """The whole pipeline as one function call: no HTTP, no spans (the benchmark's limit)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.backend = load_backend(settings)
        self.labels = load_labels()
        self._tracer = trace.NoOpTracer()

    def __call__(self, data: bytes) -> tuple[list[Prediction], dict[str, float]]:
        timer = StageTimer(self._tracer, "inprocess")
        tensor = image_to_tensor(data, self.settings, timer)
        with timer.stage("inference"):
            logits = self.backend.predict(tensor)
        with timer.stage("postprocess"):
            top = predictions(top_k(logits[0], self.labels))
        return top, timer.timings_ms


def create_app(settings: Settings | None = None, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    settings = settings or Settings()
    provider = create_tracer_provider(SERVICE, settings, span_exporter)

    @contextlib.asynccontextmanager
    async def resources(app: FastAPI):
        app.state.backend = None
        app.state.labels = load_labels()
        app.state.backend = await anyio.to_thread.run_sync(load_backend, settings)
        yield

    async def ready(app: FastAPI) -> tuple[bool, str]:
        return readiness(app.state.backend)

    app = build_app(
        SERVICE,
        settings,
        description=__doc__,
        tracer_provider=provider,
        resources=resources,
        ready=ready,
        max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
    )

    @app.post("/classify", tags=["monolith"], summary="Classify an image in one hop: the top class and the top 5")
    async def classify(response: Response, file: UploadFile = File(..., description="JPEG, PNG or WebP image")) -> FinalizeResponse:
        start = time.perf_counter()
        data = await read_upload(file, settings)
        timer = StageTimer(app.state.tracer, SERVICE)
        backend = app.state.backend
        tensor: np.ndarray = await anyio.to_thread.run_sync(image_to_tensor, data, settings, timer)
        with timer.stage("inference", **{"model.name": backend.name, "model.backend": backend.kind}):
            logits = await anyio.to_thread.run_sync(backend.predict, tensor)
        with timer.stage("postprocess"):
            top = predictions(top_k(logits[0], app.state.labels))
        timer.timings_ms[f"{SERVICE}.total"] = (time.perf_counter() - start) * 1000
        response.headers[SERVER_TIMING_HEADER] = timer.header()
        return FinalizeResponse(
            class_id=top[0].class_id, label=top[0].label, score=top[0].score, top5=top,
            model=backend.name, backend=backend.kind, trace_id=current_trace_id(), timings_ms=timer.timings_ms,
        )

    return app
