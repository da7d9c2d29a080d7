"""The monolith's data plane: the three stages as one computation — ``image_to_tensor`` from
preprocess, the model's backend, postprocess's top-k — with no web framework and no hops.

``Pipeline.classify`` runs in one worker thread per request (the monolith's route), and as
``InProcessPipeline`` it is the benchmark's no-HTTP limit.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

from ml_pipeline.core.wire import Attr
from ml_pipeline.observability.stages import StageTimer
from ml_pipeline.settings import MonolithSettings
from model.backends import Backend, load_backend, readiness
from postprocess.schemas import Prediction, predictions
from postprocess.scoring import load_labels, top_k
from preprocess.dataplane import image_to_tensor


class Pipeline:
    def __init__(self, settings: MonolithSettings):
        self.settings = settings
        self.labels = load_labels()
        self.backend: Backend | None = None  # until load(): /ready says "loading"

    def load(self) -> None:
        """Seconds (a first local run converts the checkpoint): call it off the event loop."""
        self.backend = load_backend(self.settings)

    def ready(self) -> tuple[bool, str]:
        return readiness(self.backend)

    def classify(self, data: bytes, timer: StageTimer) -> dict[str, Any]:
        """The answer's fields (``FinalizeResponse`` without the trace id and timings). CPU-bound."""
        backend = self.backend
        if backend is None:
            raise RuntimeError("classify() before load()")
        tensor = image_to_tensor(data, self.settings, timer)
        with timer.stage("inference", {Attr.MODEL_NAME: backend.name, Attr.MODEL_BACKEND: backend.kind}):
            logits = backend.predict(tensor)
        with timer.stage("postprocess"):
            top = predictions(top_k(logits[0], self.labels))
        return {
            "class_id": top[0].class_id,
            "label": top[0].label,
            "score": top[0].score,
            "top5": top,
            "model": backend.name,
            "backend": backend.kind,
        }


class InProcessPipeline:
    """The whole pipeline as one function call: no HTTP, no spans (the benchmark's limit)."""

    def __init__(self, settings: MonolithSettings):
        self._pipeline = Pipeline(settings)
        self._pipeline.load()
        self._tracer = trace.NoOpTracer()

    def __call__(self, data: bytes) -> tuple[list[Prediction], dict[str, float]]:
        timer = StageTimer(self._tracer, "inprocess")
        answer = self._pipeline.classify(data, timer)
        return answer["top5"], timer.timings_ms
