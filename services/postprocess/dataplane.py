"""postprocess's data plane: an uploaded image → preprocess → the model's scores → the top classes,
with the result cache in front. No web framework here: ``postprocess.app`` reads the upload and
writes the JSON answer.
"""

from __future__ import annotations

import os
import re
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


class Finalizer:
    def __init__(self, settings: PostprocessSettings, preprocess: Downstream):
        self.preprocess = preprocess
        self.labels = load_labels()
        self.cache: ResultCache[dict[str, Any]] = ResultCache(settings.result_cache_size, settings.result_cache_ttl_s)
        for result in ("hit", "miss"):  # series exist (at 0) from the start, so dashboards show 0, not "No data"
            metrics.CACHE_LOOKUPS.labels(SERVICE, result)
        metrics.CACHE_ENTRIES.labels(SERVICE).set(0)

    async def finalize(
        self, data: bytes, filename: str | None, content_type: str | None, timer: StageTimer
    ) -> dict[str, Any]:
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
            body, multipart_type = one_body_upload(
                filename or "image", data, content_type or "application/octet-stream"
            )
            scored = await self.preprocess.post("/process", content=body, headers={"Content-Type": multipart_type})
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


# How a multipart form writes a parameter's value between its quotes (the HTML5 form encoding, as
# browsers and httpx do): quotes and control characters (but ESC) percent-escaped, backslashes doubled.
_FORM_PARAM_ESCAPES = {'"': "%22", "\\": "\\\\"} | {chr(c): f"%{c:02X}" for c in range(0x20) if c != 0x1B}
_FORM_PARAM_UNSAFE = re.compile("|".join(re.escape(c) for c in _FORM_PARAM_ESCAPES))


def one_body_upload(filename: str, data: bytes, content_type: str, boundary: str | None = None) -> tuple[bytes, str]:
    """The upload as one multipart body (field ``file``) and its Content-Type, written here: httpx's
    ``files=`` streams the body in pieces (each its own socket write and wake-up of preprocess's
    reader), and reading them into one took 66 µs for what is a header, the data and a closing line
    (5 µs here, microbenchmark). The bytes are httpx's, for the same boundary (tested)."""
    boundary = boundary or os.urandom(16).hex()
    quoted = _FORM_PARAM_UNSAFE.sub(lambda m: _FORM_PARAM_ESCAPES[m.group(0)], filename)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    )
    return b"".join(
        (head.encode(), data, f"\r\n--{boundary}--\r\n".encode())
    ), f"multipart/form-data; boundary={boundary}"
