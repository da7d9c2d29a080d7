"""The Open Inference Protocol's (KServe v2) REST routes of the model service: thin routes over
``model.dataplane.Predictor``, so Triton's and KServe's clients and tools work unchanged.

Errors under ``/v2`` are the protocol's ``{"error": "<message>"}`` (``ml_pipeline.web.envelope``);
health answers 200 for true and 400 for false, as the protocol says.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response

from ml_pipeline import __version__
from ml_pipeline.core.errors import PipelineError
from ml_pipeline.core.wire import INFERENCE_HEADER_LENGTH_HEADER, OPEN_INFERENCE_PREFIX
from ml_pipeline.observability.stages import StageTimer
from ml_pipeline.web.app import read_body
from model.dataplane import Predictor
from model.metadata import answer_headers

SERVER_NAME = "ml-pipeline-model"
# Triton's names: its model configuration (REST .../config, gRPC ModelConfig) and statistics
# (REST .../stats, gRPC ModelStatistics) extensions, as perf_analyzer and model analyzer read them.
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
_BINARY_OR_JSON = {
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    }
}


class NotTrue(PipelineError):
    """A health question answered "no": the protocol's 4xx for false."""

    status, code = 400, "not_ready"


def add_v2_routes(app: FastAPI, predictor: Predictor, service: str) -> None:
    router = APIRouter(prefix=OPEN_INFERENCE_PREFIX, tags=["open inference protocol (v2)"])

    @router.get("", summary="Server metadata: name, version, protocol extensions")
    async def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    @router.get("/health/live", summary="Server liveness (200: live)")
    async def server_live() -> dict[str, Any]:
        return {"live": True}

    @router.get("/health/ready", summary="Server readiness (200: ready, 400: not yet)")
    async def server_ready() -> dict[str, Any]:
        ok, reason = predictor.ready()
        if not ok:
            raise NotTrue(f"{service} not ready: {reason}")
        return {"ready": True}

    # Before /models/{name}: "stats" is no model's name here.
    @router.get("/models/stats", summary="Statistics of every model (Triton's statistics extension)")
    async def all_statistics() -> dict[str, Any]:
        return predictor.statistics_report()

    for versioned in ("", "/versions/{version}"):
        model = "/models/{name}" + versioned

        @router.get(model, summary="Model metadata: inputs and outputs (-1: any batch size)")
        async def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
            return predictor.metadata(name, version)

        @router.get(model + "/ready", summary="Model readiness (200: ready, 400: not yet)")
        async def model_ready(name: str, version: str | None = None) -> dict[str, Any]:
            if not predictor.ready()[0]:
                raise NotTrue(f"model {name!r} is loading")
            predictor.served(name, version)
            return {"name": name, "ready": True}

        @router.get(model + "/config", summary="Triton-style model configuration (max batch size, dims, datatypes)")
        async def model_config(name: str, version: str | None = None) -> dict[str, Any]:
            return predictor.config(name, version)

        @router.get(
            model + "/stats",
            summary="Statistics of the model (version): counts and cumulative ns of queue, compute_input, "
            "compute_infer, compute_output (Triton's statistics extension)",
        )
        async def model_statistics(name: str, version: str | None = None) -> dict[str, Any]:
            return predictor.statistics_report(name, version)

        @router.post(
            model + "/infer",
            summary="Inference: JSON tensors, or the binary tensor data extension",
            response_class=Response,
            responses={200: _BINARY_OR_JSON},
            openapi_extra={"requestBody": {**_BINARY_OR_JSON, "required": True}},
        )
        async def model_infer(request: Request, name: str, version: str | None = None) -> Response:
            body = await read_body(request, predictor.max_json_bytes)  # any v2 body may carry JSON tensors
            header_length = request.headers.get(INFERENCE_HEADER_LENGTH_HEADER)
            timer = StageTimer(request.app.state.tracer, service)
            answer = await predictor.infer_http(name, version, body, header_length, timer)
            headers = answer_headers(predictor, timer)
            if answer.json_length is None:
                return Response(answer.body, media_type="application/json", headers=headers)
            headers[INFERENCE_HEADER_LENGTH_HEADER] = str(answer.json_length)
            return Response(answer.body, media_type="application/octet-stream", headers=headers)

    app.include_router(router)
