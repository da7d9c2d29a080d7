"""model service: POST /predict takes an ``application/x-npy`` float32 ``[N,3,224,224]`` tensor and
answers ``[N,1000]`` raw class scores (logits) in the same format.

Run: ``ml-pipeline run model`` (or ``uvicorn --factory model.app:create_app``).
"""

from __future__ import annotations

import contextlib
import time

import anyio
import numpy as np
from fastapi import FastAPI, Request, Response
from opentelemetry.sdk.trace.export import SpanExporter

from ml_pipeline import codec, deadline, handoff, metrics
from ml_pipeline.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from ml_pipeline.service import build_app
from ml_pipeline.settings import Settings
from ml_pipeline.telemetry import SERVER_TIMING_HEADER, StageTimer, create_tracer_provider
from model.backends import INPUT_SHAPE, load_backend, readiness

SERVICE = "model"
MODEL_NAME_HEADER = "X-Model-Name"
MODEL_BACKEND_HEADER = "X-Model-Backend"
MODEL_INSTANCE_HEADER = "X-Model-Instance"  # which replica answered (its service.instance.id)
HANDOFF_MEDIA_TYPES = {
    codec.NPY_MEDIA_TYPE: "http",
    handoff.JSON_MEDIA_TYPE: "json",
    handoff.REFERENCE_MEDIA_TYPE: "volume",
}
_BINARY_BODY = {"content": {codec.NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}


def validate_batch(x: np.ndarray, max_batch: int) -> None:
    if x.ndim != 4 or x.shape[1:] != INPUT_SHAPE:
        raise BadRequest(f"tensor shape {list(x.shape)} is not [N,{','.join(map(str, INPUT_SHAPE))}]", code="invalid_tensor")
    if x.dtype != np.float32:
        raise BadRequest(f"tensor dtype {x.dtype} is not float32", code="invalid_tensor")
    if not 1 <= x.shape[0] <= max_batch:
        raise BadRequest(f"batch size {x.shape[0]} is outside 1..{max_batch}", code="invalid_tensor")
    if not np.isfinite(x).all():
        raise BadRequest("tensor contains NaN or infinite values", code="invalid_tensor")


def create_app(settings: Settings | None = None, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    settings = settings or Settings()
    provider = create_tracer_provider(SERVICE, settings, span_exporter)

    @contextlib.asynccontextmanager
    async def resources(app: FastAPI):
        app.state.backend = None
        # Loading (and on a first local run, converting) takes seconds: keep the loop free.
        app.state.backend = await anyio.to_thread.run_sync(load_backend, settings)
        metrics.MODEL_INFO.info({"name": app.state.backend.name, "backend": app.state.backend.kind})
        yield

    async def ready(app: FastAPI) -> tuple[bool, str]:
        return readiness(app.state.backend)

    max_tensor_bytes = settings.max_batch * int(np.prod(INPUT_SHAPE)) * 4 + 4096  # tensor + .npy header
    # The JSON baseline spends up to ~24 characters per float.
    max_body = settings.max_batch * int(np.prod(INPUT_SHAPE)) * 24 + 4096
    app = build_app(
        SERVICE,
        settings,
        description=__doc__,
        tracer_provider=provider,
        resources=resources,
        ready=ready,
        max_body_bytes=max_body,
    )

    @app.post(
        "/predict",
        tags=["model"],
        summary="Raw class scores for a batch of normalized images",
        response_class=Response,
        responses={200: _BINARY_BODY},
        openapi_extra={"requestBody": {**_BINARY_BODY, "required": True}},
    )
    async def predict(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip()
        if media_type not in HANDOFF_MEDIA_TYPES:
            raise UnsupportedMediaType(
                f"send the tensor as {codec.NPY_MEDIA_TYPE} (or {handoff.JSON_MEDIA_TYPE}, or a "
                f"{handoff.REFERENCE_MEDIA_TYPE} file reference), not {media_type or 'no content type'}"
            )
        transport = HANDOFF_MEDIA_TYPES[media_type]
        # The app-wide body limit leaves room for the verbose JSON baseline; binary bodies get theirs.
        limit = max_body if transport == "json" else max_tensor_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        body = await request.body()
        if len(body) > limit:
            raise PayloadTooLarge(f"request body of {len(body)} bytes exceeds the limit of {limit} bytes")
        backend = app.state.backend
        timer = StageTimer(app.state.tracer, SERVICE)
        with timer.stage("tensor_decode", **{"handoff.transport": transport, "handoff.body.bytes": len(body)}) as span:
            if transport == "http":
                batch = codec.decode(body)
            elif transport == "json":
                batch = await anyio.to_thread.run_sync(handoff.decode_json, body)
            else:
                name = handoff.decode_reference(body)
                start = time.perf_counter()
                batch = await anyio.to_thread.run_sync(handoff.read_tensor, settings.shared_data_dir, name, max_tensor_bytes)
                span.set_attribute("handoff.file.read_ms", (time.perf_counter() - start) * 1000)
            span.set_attribute("tensor.bytes", batch.nbytes)
            span.set_attribute("tensor.shape", list(batch.shape))
            span.set_attribute("tensor.dtype", str(batch.dtype))
            validate_batch(batch, settings.max_batch)
        deadline.check("inference")  # whoever asked has stopped waiting
        with timer.stage(
            "inference", **{"model.name": backend.name, "model.backend": backend.kind, "batch.size": batch.shape[0]}
        ):
            logits = await anyio.to_thread.run_sync(backend.predict, batch)
        return Response(
            codec.encode(logits),
            media_type=codec.NPY_MEDIA_TYPE,
            headers={
                MODEL_NAME_HEADER: backend.name,
                MODEL_BACKEND_HEADER: backend.kind,
                MODEL_INSTANCE_HEADER: settings.service_instance_id,
                SERVER_TIMING_HEADER: timer.header(),
            },
        )

    return app
