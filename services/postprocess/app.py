"""postprocess service: POST /finalize takes an image upload (multipart field ``file``), sends it
through preprocess → model, and turns the model's raw scores into the top class (softmax here).

Run: ``ml-pipeline run postprocess`` (or ``uvicorn --factory postprocess.app:create_app``).
"""

from __future__ import annotations

import contextlib
import time

import anyio
import httpx
import numpy as np
from fastapi import FastAPI, File, Response, UploadFile
from opentelemetry.sdk.trace.export import SpanExporter

from ml_pipeline import codec, metrics
from ml_pipeline.cache import ResultCache, content_key
from ml_pipeline.client import Downstream, RetryBudget
from ml_pipeline.errors import BadGateway
from ml_pipeline.service import MULTIPART_OVERHEAD_BYTES, build_app, read_upload
from ml_pipeline.settings import Settings
from ml_pipeline.telemetry import (
    SERVER_TIMING_HEADER,
    StageTimer,
    create_tracer_provider,
    current_trace_id,
    distrust_incoming_trace_context,
)
from postprocess.schemas import FinalizeResponse, predictions
from postprocess.scoring import load_labels, top_k


SERVICE = "postprocess"
HASH_INLINE_MAX_BYTES = 256 * 1024  # hashing more than this (~0.3 ms) goes to a worker thread


def create_app(
    settings: Settings | None = None,
    *,
    span_exporter: SpanExporter | None = None,
    preprocess_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """``preprocess_transport`` lets tests wire the preprocess app in-process."""
    settings = settings or Settings()
    provider = create_tracer_provider(SERVICE, settings, span_exporter)

    @contextlib.asynccontextmanager
    async def resources(app: FastAPI):
        app.state.labels = load_labels()
        app.state.cache = ResultCache(settings.result_cache_size, settings.result_cache_ttl_s)
        for result in ("hit", "miss"):  # series exist (at 0) from the start, so dashboards show 0, not "No data"
            metrics.CACHE_LOOKUPS.labels(SERVICE, result)
        metrics.CACHE_ENTRIES.labels(SERVICE).set(0)
        app.state.preprocess = Downstream(
            "preprocess",
            settings.preprocess_url,
            timeout_s=settings.preprocess_timeout_s,
            connect_timeout_s=settings.downstream_connect_timeout_s,
            tracer_provider=provider,
            pass_client_errors=True,  # preprocess rejecting the upload is the client's error
            max_attempts=settings.preprocess_max_attempts,  # connection failures only: nothing was processed
            retry_budget=RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min),
            resolve_interval_s=settings.downstream_resolve_interval_s,
            eject_s=settings.downstream_eject_s,
            transport=preprocess_transport,
        )
        try:
            yield
        finally:
            await app.state.preprocess.aclose()

    async def ready(app: FastAPI) -> tuple[bool, str]:
        return await app.state.preprocess.is_ready(settings.readiness_timeout_s)

    app = build_app(
        SERVICE,
        settings,
        description=__doc__,
        tracer_provider=provider,
        resources=resources,
        ready=ready,
        max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
    )

    if not settings.trust_client_trace_context:  # the public edge: callers' trace ids are only links
        distrust_incoming_trace_context(app)

    @app.post("/finalize", tags=["postprocess"], summary="Classify an image: the top class and the top 5")
    async def finalize(
        response: Response, file: UploadFile = File(..., description="JPEG, PNG or WebP image")
    ) -> FinalizeResponse:
        start = time.perf_counter()
        data = await read_upload(file, settings)
        timer = StageTimer(app.state.tracer, SERVICE)
        cache: ResultCache[dict] = app.state.cache
        key = None
        if cache.enabled:
            with timer.stage("cache_lookup") as span:
                if len(data) > HASH_INLINE_MAX_BYTES:
                    key = await anyio.to_thread.run_sync(content_key, data)
                else:
                    key = content_key(data)
                cached = cache.get(key)
                span.set_attribute("cache.hit", cached is not None)
            metrics.CACHE_LOOKUPS.labels(SERVICE, "hit" if cached else "miss").inc()
            if cached is not None:
                timer.timings_ms[f"{SERVICE}.total"] = (time.perf_counter() - start) * 1000
                response.headers[SERVER_TIMING_HEADER] = timer.header()
                return FinalizeResponse(**cached, cached=True, trace_id=current_trace_id(), timings_ms=timer.timings_ms)
        with timer.stage("forward", **{"image.bytes": len(data)}):
            upload = (file.filename or "image", data, file.content_type or "application/octet-stream")
            scored = await app.state.preprocess.post("/process", files={"file": upload})
        timer.merge_header(scored.headers.get(SERVER_TIMING_HEADER))
        with timer.stage("postprocess") as span:
            logits = codec.decode(scored.content)
            if logits.shape != (1, len(app.state.labels)):
                raise BadGateway(f"model answered scores of shape {list(logits.shape)}, expected [1,{len(app.state.labels)}]")
            top = predictions(top_k(logits[0], app.state.labels))
            span.set_attribute("prediction.class_id", top[0].class_id)
            span.set_attribute("prediction.score", top[0].score)
        result = {
            "class_id": top[0].class_id,
            "label": top[0].label,
            "score": top[0].score,
            "top5": top,
            "model": scored.headers.get("X-Model-Name", "unknown"),
            "backend": scored.headers.get("X-Model-Backend", "unknown"),
            "model_instance": scored.headers.get("X-Model-Instance"),
            "transport": scored.headers.get("X-Tensor-Transport"),
        }
        if key is not None:
            cache.put(key, result)
            metrics.CACHE_ENTRIES.labels(SERVICE).set(len(cache))
        timer.timings_ms[f"{SERVICE}.total"] = (time.perf_counter() - start) * 1000
        response.headers[SERVER_TIMING_HEADER] = timer.header()
        return FinalizeResponse(**result, trace_id=current_trace_id(), timings_ms=timer.timings_ms)

    return app
