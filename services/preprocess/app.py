"""preprocess service: POST /process takes an image — a multipart upload (field ``file``) or the
image itself as the body (how postprocess sends it) — turns it into the model's ``[1,3,224,224]``
float32 tensor and sends that to the model's ``/predict``.

``?output=scores`` (default) answers the model's raw scores; ``?output=tensor`` answers the
normalized tensor itself without calling the model (standalone use). Both as ``application/x-npy``.
The tensor goes to the model as ``TRANSPORT`` says (``ml_pipeline.core.handoff``: http, json, volume),
or as ``?transport=`` asks; the ``X-Tensor-Transport`` response header says which.

Run: ``ml-pipeline run preprocess`` (or ``uvicorn --factory preprocess.app:create_app``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from enum import StrEnum

import httpx
from fastapi import FastAPI, Request, Response
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import TracerProvider

from ml_pipeline.client.downstream import (
    RETRYABLE_5XX,
    Downstream,
    downstream_from_settings,
    retry_policy_from_settings,
)
from ml_pipeline.client.retry import RetryPolicy
from ml_pipeline.core import codec
from ml_pipeline.core.wire import BINARY_NPY_CONTENT, NPY_MEDIA_TYPE, SERVER_TIMING_HEADER, HandoffMode
from ml_pipeline.observability.stages import StageTimer
from ml_pipeline.observability.tracing import create_tracer_provider
from ml_pipeline.settings import PreprocessSettings, load_settings
from ml_pipeline.web.app import (
    INVALID_REQUEST,
    MULTIPART_OVERHEAD_BYTES,
    UPLOAD_FORM,
    build_app,
    hot_post,
    query_choice,
    query_parameter,
    read_image,
)
from preprocess.dataplane import Preprocessor
from preprocess.model_grpc import GrpcModel

SERVICE = "preprocess"


class Output(StrEnum):
    scores = "scores"
    tensor = "tensor"


OUTPUT_HELP = "`scores`: call the model; `tensor`: return the tensor"
TRANSPORT_HELP = (
    "the tensor hand-off for this request (default: `MODEL_PROTOCOL`, and `TRANSPORT` for `npy`); "
    "needs `ALLOW_TRANSPORT_OVERRIDE`"
)


def create_app(
    settings: PreprocessSettings | None = None,
    *,
    span_exporter: SpanExporter | None = None,
    model_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """``model_transport`` lets tests wire the model app in-process (``httpx.ASGITransport``)."""
    settings = settings or load_settings(PreprocessSettings)
    provider = create_tracer_provider(SERVICE, settings, span_exporter)

    @contextlib.asynccontextmanager
    async def resources(app: FastAPI) -> AsyncIterator[None]:
        # One retry policy (attempts, budget) for the model, whichever protocol calls it.
        retry = retry_policy_from_settings("model", settings, settings.model_max_attempts)
        model = model_client(settings, provider, model_transport, retry)
        model_grpc = GrpcModel(
            settings.model_grpc_target, settings.model_timeout_s, provider, retry=retry
        )  # connects when first used
        app.state.preprocessor = Preprocessor(settings, model, model_grpc)
        settings.shared_data_dir.mkdir(parents=True, exist_ok=True)
        sweeper = asyncio.get_running_loop().create_task(app.state.preprocessor.sweep_forever())
        try:
            yield
        finally:
            sweeper.cancel()
            await model.aclose()
            await model_grpc.aclose()

    async def ready(app: FastAPI) -> tuple[bool, str]:
        return await app.state.preprocessor.model.is_ready(settings.readiness_timeout_s)

    app = build_app(
        SERVICE,
        settings,
        description=__doc__ or "",
        tracer_provider=provider,
        resources=resources,
        ready=ready,
        max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
    )
    add_routes(app, settings)
    return app


def model_client(
    settings: PreprocessSettings,
    provider: TracerProvider,
    transport: httpx.AsyncBaseTransport | None,
    retry: RetryPolicy,
) -> Downstream:
    return downstream_from_settings(
        "model",
        settings.model_url,
        settings,
        provider,
        timeout_s=settings.model_timeout_s,
        pass_client_errors=False,  # we built the tensor: a 4xx from the model is our bug
        # Inference is a pure function of the tensor: another replica may safely try again.
        retry=retry,
        retry_statuses=RETRYABLE_5XX,
        attempt_timeout_s=settings.model_attempt_timeout_s,  # a hung replica is left for another
        transport=transport,
    )


def add_routes(app: FastAPI, settings: PreprocessSettings) -> None:
    @hot_post(
        app,
        "/process",
        tags=["preprocess"],
        summary="Image upload → model scores (or the normalized tensor)",
        response_class=Response,
        responses={200: {"content": BINARY_NPY_CONTENT}, **INVALID_REQUEST},
        openapi_extra={
            "parameters": [
                query_parameter("output", Output, OUTPUT_HELP, default=Output.scores),
                query_parameter("transport", HandoffMode, TRANSPORT_HELP),
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": UPLOAD_FORM},
                    # The image itself as the body (``read_image``): what postprocess sends.
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
        },
    )
    async def process(request: Request) -> Response:
        output = query_choice(request, "output", Output) or Output.scores
        preprocessor: Preprocessor = app.state.preprocessor
        mode = preprocessor.transport(query_choice(request, "transport", HandoffMode))
        data = await read_image(request, settings)
        timer = StageTimer(app.state.tracer, SERVICE)
        tensor = await preprocessor.tensor(data, timer)
        if output is Output.tensor:
            headers = {SERVER_TIMING_HEADER: timer.header()}
            return Response(codec.encode(tensor), media_type=NPY_MEDIA_TYPE, headers=headers)
        scores = await preprocessor.scores(tensor, mode, timer)
        return Response(scores.body, media_type=NPY_MEDIA_TYPE, headers=scores.headers)
