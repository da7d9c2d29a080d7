"""The JSON answers of /finalize (postprocess) and /classify (monolith): one schema for both."""

from __future__ import annotations

from pydantic import BaseModel, Field

from postprocess.scoring import Scored


class Prediction(BaseModel):
    class_id: int = Field(description="ImageNet-1k class index, 0..999")
    label: str = Field(description="ImageNet-1k class name")
    score: float = Field(description="softmax probability")


class FinalizeResponse(BaseModel):
    class_id: int
    label: str
    score: float
    top5: list[Prediction]
    model: str = Field(description="model that produced the scores")
    backend: str = Field(description="`onnx` (real model) or `random` (fictitious)")
    model_instance: str | None = Field(
        None, description="the model replica that computed the scores (its `service.instance.id`)"
    )
    transport: str | None = Field(
        None, description="how preprocess handed the tensor to the model: `http`, `json` or `volume`"
    )
    cached: bool = Field(
        False, description="answered from the result cache (`RESULT_CACHE_SIZE` > 0), not by the chain"
    )
    trace_id: str | None = Field(description="W3C trace id of this request (also in the X-Trace-Id header)")
    timings_ms: dict[str, float] = Field(description="per-stage durations, `<service>.<stage>`, from Server-Timing")


def predictions(top: list[Scored]) -> list[Prediction]:
    return [Prediction(class_id=p.class_id, label=p.label, score=p.score) for p in top]
