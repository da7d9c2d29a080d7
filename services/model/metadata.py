"""The pipeline's own headers on a model's answer: HTTP headers on ``/predict`` and the protocol's
REST routes, initial metadata on its gRPC service. The data plane says who answered; this names it."""

from __future__ import annotations

from ml_pipeline.core.wire import MODEL_BACKEND_HEADER, MODEL_INSTANCE_HEADER, MODEL_NAME_HEADER, SERVER_TIMING_HEADER
from ml_pipeline.observability.stages import StageTimer
from model.dataplane import Predictor


def answer_headers(predictor: Predictor, timer: StageTimer) -> dict[str, str]:
    """The model, its backend, the replica and the stages' Server-Timing; none in protocol-only mode."""
    identity = predictor.identity()
    if identity is None:
        return {}
    return {
        MODEL_NAME_HEADER: identity.name,
        MODEL_BACKEND_HEADER: identity.backend,
        MODEL_INSTANCE_HEADER: identity.instance,
        SERVER_TIMING_HEADER: timer.header(),
    }
