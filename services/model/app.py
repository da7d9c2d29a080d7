"""model service: POST /predict takes an ``application/x-npy`` float32 ``[N,3,224,224]`` tensor and
answers ``[N,1000]`` raw class scores (logits) in the same format.

Run: ``ml-pipeline run model`` (or ``uvicorn --factory model.app:create_app``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from opentelemetry.sdk.trace.export import SpanExporter

from ml_pipeline.core import handoff
from ml_pipeline.core.wire import BINARY_NPY_CONTENT, NPY_MEDIA_TYPE
from ml_pipeline.observability.stages import StageTimer
from ml_pipeline.observability.tracing import create_tracer_provider
from ml_pipeline.settings import ModelSettings, load_settings
from ml_pipeline.web.app import build_app, hot_post, read_body
from model.dataplane import Predictor
from model.grpc_server import start_grpc_server
from model.metadata import answer_headers
from model.v2_endpoints import add_v2_routes

SERVICE = "model"
GRPC_GRACE_S = 10.0  # calls in flight at shutdown may finish within this (uvicorn drains HTTP alike)


def create_app(settings: ModelSettings | None = None, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    settings = settings or load_settings(ModelSettings)
    provider = create_tracer_provider(SERVICE, settings, span_exporter)
    predictor = Predictor(settings)

    @contextlib.asynccontextmanager
    async def resources(app: FastAPI) -> AsyncIterator[None]:
        await predictor.load(app.state.tracer)
        server = None
        if settings.grpc_enabled:
            server, app.state.grpc_port = await start_grpc_server(
                predictor, settings, provider, app.state.tracer, SERVICE
            )
        try:
            yield
        finally:
            if server is not None:
                await server.stop(grace=GRPC_GRACE_S)
            await predictor.close()

    async def ready(app: FastAPI) -> tuple[bool, str]:
        return predictor.ready()

    app = build_app(
        SERVICE,
        settings,
        description=__doc__ or "",
        tracer_provider=provider,
        resources=resources,
        ready=ready,
        max_body_bytes=predictor.max_body_bytes,  # the JSON baseline's; each encoding has its own below
    )
    app.state.predictor = predictor

    if not settings.open_inference_only:
        add_predict_route(app, predictor)
    add_v2_routes(app, predictor, SERVICE)
    return app


def add_predict_route(app: FastAPI, predictor: Predictor) -> None:
    """The pipeline's own ``/predict``: a ``.npy``, JSON or file-reference body → ``.npy`` logits."""

    @hot_post(
        app,
        "/predict",
        tags=["model"],
        summary="Raw class scores for a batch of normalized images",
        response_class=Response,
        responses={200: {"content": BINARY_NPY_CONTENT}},
        openapi_extra={"requestBody": {"content": BINARY_NPY_CONTENT, "required": True}},
    )
    async def predict(request: Request) -> Response:
        transport = handoff.mode_of(request.headers.get("content-type"))
        body = await read_body(request, predictor.body_limit(transport))
        timer = StageTimer(app.state.tracer, SERVICE)
        logits = await predictor.predict(body, transport, timer)
        return Response(logits, media_type=NPY_MEDIA_TYPE, headers=answer_headers(predictor, timer))
