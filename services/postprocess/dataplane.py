"""postprocess's data plane: an uploaded image → preprocess → the model's scores → the top classes,
with the result cache in front. No web framework here: ``postprocess.app`` reads the upload and
writes the JSON answer.
"""

from __future__ import annotations

from typing import Any

import anyio

from ml_pipeline.client.downstream import Downstream
from ml_pipeline.core import codec
from ml_pipeline.core.cache import ResultCache, content_key
from ml_pipeline.core.errors import BadGateway
from ml_pipeline.core.wire import (
    MODEL_BACKEND_HEADER,
    MODEL_INSTANCE_HEADER,
    MODEL_NAME_HEADER,
    SERVER_TIMING_HEADER,
    TENSOR_TRANSPORT_HEADER,
    Attr,
)
from ml_pipeline.observability import metrics
from ml_pipeline.observability.stages import StageTimer
from ml_pipeline.settings import PostprocessSettings
from postprocess.schemas import predictions
from postprocess.scoring import load_labels, top_k

SERVICE = "postprocess"
HASH_INLINE_MAX_BYTES = 256 * 1024  # hashing more than this (~0.3 ms) goes to a worker thread
FORWARD_HEADERS = {"Content-Type": "application/octet-stream"}


class Finalizer:
    def __init__(self, settings: PostprocessSettings, preprocess: Downstream):
        self.preprocess = preprocess
        self.labels = load_labels()
        self.cache: ResultCache[dict[str, Any]] = ResultCache(settings.result_cache_size, settings.result_cache_ttl_s)
        for result in ("hit", "miss"):  # series exist (at 0) from the start, so dashboards show 0, not "No data"
            metrics.CACHE_LOOKUPS.labels(SERVICE, result)
        metrics.CACHE_ENTRIES.labels(SERVICE).set(0)

    async def finalize(self, data: bytes, timer: StageTimer) -> dict[str, Any]:
        """The answer's fields (``FinalizeResponse`` without the trace id and timings)."""
        key = None
        if self.cache.enabled:
            with timer.stage("cache_lookup") as span:
                key = await self._key(data)
                cached = self.cache.get(key)
                span.set_attribute(Attr.CACHE_HIT, cached is not None)
            metrics.CACHE_LOOKUPS.labels(SERVICE, "hit" if cached else "miss").inc()
            if cached is not None:
                return {**cached, "cached": True}
        with timer.stage("forward", {Attr.IMAGE_BYTES: len(data)}):
            # The image as the body, not a multipart upload (preprocess takes both): nothing to
            # write here or parse there. Always octet-stream: the client's declared type (even a
            # form's) never decides how preprocess reads the body; it sniffs the image itself.
            scored = await self.preprocess.post("/process", content=data, headers=FORWARD_HEADERS)
        timer.merge_header(scored.headers.get(SERVER_TIMING_HEADER))
        result = self._top_classes(scored.content, timer)
        result.update(
            model=scored.headers.get(MODEL_NAME_HEADER, "unknown"),
            backend=scored.headers.get(MODEL_BACKEND_HEADER, "unknown"),
            model_instance=scored.headers.get(MODEL_INSTANCE_HEADER),
            transport=scored.headers.get(TENSOR_TRANSPORT_HEADER),
        )
        if key is not None:
            self.cache.put(key, result)
            metrics.CACHE_ENTRIES.labels(SERVICE).set(len(self.cache))
        return result

    async def _key(self, data: bytes) -> str:
        if len(data) > HASH_INLINE_MAX_BYTES:
            return await anyio.to_thread.run_sync(content_key, data)
        return content_key(data)

    def _top_classes(self, scores_npy: bytes, timer: StageTimer) -> dict[str, Any]:
        with timer.stage("postprocess") as span:
            logits = codec.decode(scores_npy)
            if logits.shape != (1, len(self.labels)):
                raise BadGateway(
                    f"model answered scores of shape {list(logits.shape)}, expected [1,{len(self.labels)}]"
                )
            top = predictions(top_k(logits[0], self.labels))
            span.set_attribute(Attr.PREDICTION_CLASS_ID, top[0].class_id)
            span.set_attribute(Attr.PREDICTION_SCORE, top[0].score)
        return {"class_id": top[0].class_id, "label": top[0].label, "score": top[0].score, "top5": top}
