"""preprocess service: POST /process takes an image upload (multipart field ``file``), turns it
into the model's ``[1,3,224,224]`` float32 tensor and sends that to the model's ``/predict``.

``?output=scores`` (default) answers the model's raw scores; ``?output=tensor`` answers the
normalized tensor itself without calling the model (standalone use). Both as ``application/x-npy``.
The tensor goes to the model as ``TRANSPORT`` says (``ml_pipeline.handoff``: http, json, volume),
or as ``?transport=`` asks; the ``X-Tensor-Transport`` response header says which.

Run: ``ml-pipeline run preprocess`` (or ``uvicorn --factory preprocess.app:create_app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from enum import Enum

import anyio
import httpx
import numpy as np
from fastapi import FastAPI, File, Query, Response, UploadFile
from opentelemetry.sdk.trace.export import SpanExporter

from ml_pipeline import codec, deadline, handoff, metrics
from ml_pipeline.client import RETRYABLE_5XX, Downstream, RetryBudget
from ml_pipeline.errors import BadRequest
from ml_pipeline.service import MULTIPART_OVERHEAD_BYTES, build_app, read_upload
from ml_pipeline.settings import Settings
from ml_pipeline.telemetry import SERVER_TIMING_HEADER, StageTimer, create_tracer_provider
from preprocess import imaging

SERVICE = "preprocess"
log = logging.getLogger("ml_pipeline.preprocess")
FORWARDED_MODEL_HEADERS = ("X-Model-Name", "X-Model-Backend", "X-Model-Instance")
_NPY_RESPONSE = {200: {"content": {codec.NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}}


class Output(str, Enum):
    scores = "scores"
    tensor = "tensor"


class Transport(str, Enum):
    http = "http"
    json = "json"
    volume = "volume"


def image_to_tensor(data: bytes, settings: Settings, timer: StageTimer) -> np.ndarray:
    """The CPU-bound part, run in a worker thread: decode → resize/crop → normalize."""
    deadline.check("decoding the image")  # it may have waited for a decode slot
    with timer.stage("decode", **{"image.bytes": len(data)}) as span:
        img = imaging.decode(data, settings.max_image_pixels, settings.max_full_decode_pixels)
        span.set_attribute("image.width", img.width)
        span.set_attribute("image.height", img.height)
    with timer.stage("resize", **{"resize.short_side": imaging.RESIZE_SHORT_SIDE, "crop.size": imaging.CROP_SIZE}):
        img = imaging.resize_crop(img)
    with timer.stage("normalize") as span:
        tensor = imaging.normalize(img)
        span.set_attribute("tensor.shape", list(tensor.shape))
    return tensor


async def hand_off(app: FastAPI, settings: Settings, tensor: np.ndarray, mode: str, span) -> httpx.Response:
    """Send ``tensor`` to the model the ``mode`` way; the model's answer."""
    if mode == "http":
        body, media_type = codec.encode(tensor), codec.NPY_MEDIA_TYPE
    elif mode == "json":
        body = await anyio.to_thread.run_sync(handoff.encode_json, tensor)  # tens of ms of float formatting
        media_type = handoff.JSON_MEDIA_TYPE
    else:
        start = time.perf_counter()
        name, size = await anyio.to_thread.run_sync(handoff.write_tensor, settings.shared_data_dir, tensor)
        span.set_attribute("handoff.file.write_ms", (time.perf_counter() - start) * 1000)
        span.set_attribute("handoff.file.bytes", size)
        body, media_type = handoff.encode_reference(name), handoff.REFERENCE_MEDIA_TYPE
    tensor_bytes = size if mode == "volume" else len(body)
    span.set_attribute("tensor.bytes", tensor_bytes)  # what crosses from preprocess to the model
    span.set_attribute("handoff.body.bytes", len(body))  # what goes over HTTP (a name, for volume)
    metrics.HANDOFF_BYTES.labels(mode).observe(tensor_bytes)
    try:
        return await app.state.model.post("/predict", content=body, headers={"Content-Type": media_type})
    finally:
        if mode == "volume":  # answered or failed (after any retries on other replicas): done with it
            await anyio.to_thread.run_sync(handoff.remove, settings.shared_data_dir, name)


async def sweep_forever(settings: Settings) -> None:
    """Remove hand-off files a crash left behind (older than the TTL), every half TTL."""
    while True:
        try:
            removed = await anyio.to_thread.run_sync(handoff.sweep, settings.shared_data_dir, settings.handoff_file_ttl_s)
            if removed:
                log.warning("swept %d orphaned hand-off file(s) from %s", removed, settings.shared_data_dir)
        except OSError as exc:
            log.warning("sweeping %s failed: %s", settings.shared_data_dir, exc)
        await asyncio.sleep(settings.handoff_file_ttl_s / 2)


def create_app(
    settings: Settings | None = None,
    *,
    span_exporter: SpanExporter | None = None,
    model_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """``model_transport`` lets tests wire the model app in-process (``httpx.ASGITransport``)."""
    settings = settings or Settings()
    provider = create_tracer_provider(SERVICE, settings, span_exporter)

    @contextlib.asynccontextmanager
    async def resources(app: FastAPI):
        app.state.model = Downstream(
            "model",
            settings.model_url,
            timeout_s=settings.model_timeout_s,
            connect_timeout_s=settings.downstream_connect_timeout_s,
            tracer_provider=provider,
            pass_client_errors=False,  # we built the tensor: a 4xx from the model is our bug
            # Inference is a pure function of the tensor: another replica may safely try again.
            max_attempts=settings.model_max_attempts,
            retry_statuses=RETRYABLE_5XX,
            attempt_timeout_s=settings.model_attempt_timeout_s,  # a hung replica is left for another
            retry_budget=RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min),
            resolve_interval_s=settings.downstream_resolve_interval_s,
            eject_s=settings.downstream_eject_s,
            transport=model_transport,
        )
        # Decodes get their own threads, as many as `MAX_CONCURRENT_DECODES`: that bounds decode memory.
        app.state.decode_slots = anyio.CapacityLimiter(settings.max_concurrent_decodes)
        settings.shared_data_dir.mkdir(parents=True, exist_ok=True)
        sweeper = asyncio.get_running_loop().create_task(sweep_forever(settings))
        try:
            yield
        finally:
            sweeper.cancel()
            await app.state.model.aclose()

    async def ready(app: FastAPI) -> tuple[bool, str]:
        return await app.state.model.is_ready(settings.readiness_timeout_s)

    app = build_app(
        SERVICE,
        settings,
        description=__doc__,
        tracer_provider=provider,
        resources=resources,
        ready=ready,
        max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
    )

    @app.post(
        "/process",
        tags=["preprocess"],
        summary="Image upload → model scores (or the normalized tensor)",
        response_class=Response,
        responses=_NPY_RESPONSE,
    )
    async def process(
        file: UploadFile = File(..., description="JPEG, PNG or WebP image"),
        output: Output = Query(Output.scores, description="`scores`: call the model; `tensor`: return the tensor"),
        transport: Transport | None = Query(
            None, description="the tensor hand-off for this request (default: `TRANSPORT`); needs `ALLOW_TRANSPORT_OVERRIDE`"
        ),
    ) -> Response:
        if transport is not None and not settings.allow_transport_override:
            raise BadRequest(
                "choosing the hand-off per request (?transport=) is turned off; set ALLOW_TRANSPORT_OVERRIDE=true to allow it",
                code="transport_override_disabled",
            )
        data = await read_upload(file, settings)
        timer = StageTimer(app.state.tracer, SERVICE)
        tensor = await anyio.to_thread.run_sync(image_to_tensor, data, settings, timer, limiter=app.state.decode_slots)
        if output is Output.tensor:
            return Response(codec.encode(tensor), media_type=codec.NPY_MEDIA_TYPE, headers={SERVER_TIMING_HEADER: timer.header()})

        mode = (transport or Transport(settings.transport)).value
        with timer.stage("handoff", **{"handoff.transport": mode, "tensor.shape": list(tensor.shape)}) as span:
            response = await hand_off(app, settings, tensor, mode, span)
        timer.merge_header(response.headers.get(SERVER_TIMING_HEADER))
        headers = {h: response.headers[h] for h in FORWARDED_MODEL_HEADERS if h in response.headers}
        headers[SERVER_TIMING_HEADER] = timer.header()
        headers[handoff.TRANSPORT_HEADER] = mode
        return Response(response.content, media_type=codec.NPY_MEDIA_TYPE, headers=headers)

    return app
