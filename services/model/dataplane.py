"""The model's data plane: a request body in one of the hand-off encodings → validated batch →
logits. No web framework here: ``model.app``'s route reads the body and writes the answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
import numpy as np

from ml_pipeline import codec, deadline, handoff, metrics
from ml_pipeline.errors import BadRequest, UnsupportedMediaType
from ml_pipeline.settings import ModelSettings
from ml_pipeline.telemetry import StageTimer
from ml_pipeline.wire import (
    JSON_TENSOR_MEDIA_TYPE,
    MODEL_BACKEND_HEADER,
    MODEL_INSTANCE_HEADER,
    MODEL_NAME_HEADER,
    NPY_MEDIA_TYPE,
    SERVER_TIMING_HEADER,
    TENSOR_REFERENCE_MEDIA_TYPE,
    TRANSPORT_BY_MEDIA_TYPE,
    Attr,
)
from model.backends import INPUT_SHAPE, Backend, load_backend, readiness

NPY_HEADER_BYTES = 4096  # room for a .npy header, however it is padded
REFERENCE_MAX_BYTES = 1024  # {"name": "<32 hex>.npy"} is ~50 bytes: no megabytes for json.loads
JSON_BYTES_PER_FLOAT = 24  # the JSON baseline spends up to ~24 characters per float


def validate_batch(x: np.ndarray, max_batch: int) -> None:
    if x.ndim != 4 or x.shape[1:] != INPUT_SHAPE:
        raise BadRequest(
            f"tensor shape {list(x.shape)} is not [N,{','.join(map(str, INPUT_SHAPE))}]", code="invalid_tensor"
        )
    if x.dtype != np.float32:
        raise BadRequest(f"tensor dtype {x.dtype} is not float32", code="invalid_tensor")
    if not 1 <= x.shape[0] <= max_batch:
        raise BadRequest(f"batch size {x.shape[0]} is outside 1..{max_batch}", code="invalid_tensor")
    if not np.isfinite(x).all():
        raise BadRequest("tensor contains NaN or infinite values", code="invalid_tensor")


@dataclass(frozen=True)
class Logits:
    """The answer: the ``.npy`` body and the headers naming the model and the replica."""

    body: bytes
    headers: dict[str, str]


class Predictor:
    """Loads the backend once (in a worker thread: seconds, converting on a first local run) and
    answers batches in any hand-off encoding, each bounded by its own body limit."""

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.backend: Backend | None = None  # until load() finished: /ready says "loading"
        floats = settings.max_batch * int(np.prod(INPUT_SHAPE))
        self.max_tensor_bytes = floats * 4 + NPY_HEADER_BYTES
        self.max_body_bytes = floats * JSON_BYTES_PER_FLOAT + NPY_HEADER_BYTES  # the verbose JSON baseline

    async def load(self) -> None:
        self.backend = await anyio.to_thread.run_sync(load_backend, self.settings)
        metrics.MODEL_INFO.info({"name": self.backend.name, "backend": self.backend.kind})

    def ready(self) -> tuple[bool, str]:
        return readiness(self.backend)

    @staticmethod
    def transport_of(content_type: str | None) -> str:
        """The hand-off a request body's media type says it is; 415 for any other."""
        media_type = (content_type or "").split(";")[0].strip()
        if media_type not in TRANSPORT_BY_MEDIA_TYPE:
            raise UnsupportedMediaType(
                f"send the tensor as {NPY_MEDIA_TYPE} (or {JSON_TENSOR_MEDIA_TYPE}, or a "
                f"{TENSOR_REFERENCE_MEDIA_TYPE} file reference), not {media_type or 'no content type'}"
            )
        return TRANSPORT_BY_MEDIA_TYPE[media_type]

    def body_limit(self, transport: str) -> int:
        """A binary body gets the tensor's size, a file reference a few hundred bytes; only the
        JSON baseline needs more."""
        return {"json": self.max_body_bytes, "volume": REFERENCE_MAX_BYTES}.get(transport, self.max_tensor_bytes)

    async def predict(self, body: bytes, transport: str, timer: StageTimer) -> Logits:
        backend = self.backend
        if backend is None:  # the admission layer's readiness gate normally keeps requests out
            raise RuntimeError("predict() before load()")
        with timer.stage(
            "tensor_decode", {Attr.HANDOFF_TRANSPORT: transport, Attr.HANDOFF_BODY_BYTES: len(body)}
        ) as span:
            if transport == "http":
                batch = codec.decode(body)
            elif transport == "json":
                batch = await anyio.to_thread.run_sync(handoff.decode_json, body)
            else:
                name = handoff.decode_reference(body)
                start = time.perf_counter()
                batch = await anyio.to_thread.run_sync(
                    handoff.read_tensor, self.settings.shared_data_dir, name, self.max_tensor_bytes
                )
                span.set_attribute(Attr.HANDOFF_FILE_READ_MS, (time.perf_counter() - start) * 1000)
            span.set_attribute(Attr.TENSOR_BYTES, batch.nbytes)
            span.set_attribute(Attr.TENSOR_SHAPE, list(batch.shape))
            span.set_attribute(Attr.TENSOR_DTYPE, str(batch.dtype))
            validate_batch(batch, self.settings.max_batch)
        deadline.check("inference")  # whoever asked has stopped waiting
        attributes = {Attr.MODEL_NAME: backend.name, Attr.MODEL_BACKEND: backend.kind, Attr.BATCH_SIZE: batch.shape[0]}
        with timer.stage("inference", attributes):
            logits = await anyio.to_thread.run_sync(backend.predict, batch)
        return Logits(
            codec.encode(logits),
            {
                MODEL_NAME_HEADER: backend.name,
                MODEL_BACKEND_HEADER: backend.kind,
                MODEL_INSTANCE_HEADER: self.settings.service_instance_id,
                SERVER_TIMING_HEADER: timer.header(),
            },
        )
