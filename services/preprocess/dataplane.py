"""preprocess's data plane: image bytes → normalized tensor → the model's scores.

No web framework here: the routes in ``preprocess.app`` read the upload and write the response;
the monolith and the in-process benchmark reuse ``image_to_tensor``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import anyio
import httpx
import numpy as np
from opentelemetry.trace import Span

from ml_pipeline.client.downstream import Downstream
from ml_pipeline.core import codec, deadline, handoff, open_inference
from ml_pipeline.core.errors import BadGateway, BadRequest
from ml_pipeline.core.wire import (
    INFERENCE_HEADER_LENGTH_HEADER,
    JSON_TENSOR_MEDIA_TYPE,
    MODEL_HEADERS,
    MODEL_INPUT_NAME,
    MODEL_NAME_HEADER,
    MODEL_OUTPUT_NAME,
    NPY_MEDIA_TYPE,
    OPEN_INFERENCE_PREFIX,
    SERVER_TIMING_HEADER,
    TENSOR_REFERENCE_MEDIA_TYPE,
    TENSOR_TRANSPORT_HEADER,
    Attr,
    HandoffMode,
)
from ml_pipeline.observability import metrics
from ml_pipeline.observability.stages import StageTimer
from ml_pipeline.settings import ImageSettings, PreprocessSettings
from preprocess import imaging
from preprocess.model_grpc import GrpcModel

log = logging.getLogger("ml_pipeline.preprocess")
MAX_SCORES = 1_000_000  # elements of the model's answer preprocess reads (a batch of one: 1000)


def image_to_tensor(data: bytes, settings: ImageSettings, timer: StageTimer) -> np.ndarray:
    """The CPU-bound part, run in a worker thread: decode → resize/crop → normalize."""
    deadline.check("decoding the image")  # it may have waited for a decode slot
    with timer.stage("decode", {Attr.IMAGE_BYTES: len(data)}) as span:
        img = imaging.decode(data, settings.max_image_pixels, settings.max_full_decode_pixels)
        span.set_attribute(Attr.IMAGE_WIDTH, img.width)
        span.set_attribute(Attr.IMAGE_HEIGHT, img.height)
    with timer.stage("resize", {Attr.RESIZE_SHORT_SIDE: imaging.RESIZE_SHORT_SIDE, Attr.CROP_SIZE: imaging.CROP_SIZE}):
        img = imaging.resize_crop(img)
    with timer.stage("normalize") as span:
        tensor = imaging.normalize(img)
        span.set_attribute(Attr.TENSOR_SHAPE, list(tensor.shape))
    return tensor


@dataclass(frozen=True)
class Scores:
    """The model's answer as preprocess passes it on: the ``.npy`` body and the headers to forward."""

    body: bytes
    headers: dict[str, str]


class Preprocessor:
    """Decodes with at most ``MAX_CONCURRENT_DECODES`` images at once (their own worker threads:
    that bounds decode memory) and hands tensors to the model the configured way."""

    def __init__(self, settings: PreprocessSettings, model: Downstream, model_grpc: GrpcModel | None = None):
        self.settings = settings
        self.model = model
        self.model_grpc = model_grpc  # for v2-grpc
        self._decode_slots = anyio.CapacityLimiter(settings.max_concurrent_decodes)

    def transport(self, requested: HandoffMode | None) -> HandoffMode:
        """The hand-off for one request: ``MODEL_PROTOCOL`` (with ``TRANSPORT`` for ``npy``), or what
        it asked for where that is allowed."""
        if requested is None:
            protocol = self.settings.model_protocol
            return HandoffMode(self.settings.transport if protocol == "npy" else protocol)
        if not self.settings.allow_transport_override:
            raise BadRequest(
                "choosing the hand-off per request (?transport=) is turned off; set ALLOW_TRANSPORT_OVERRIDE=true to allow it",
                code="transport_override_disabled",
            )
        return requested

    async def tensor(self, data: bytes, timer: StageTimer) -> np.ndarray:
        return await anyio.to_thread.run_sync(image_to_tensor, data, self.settings, timer, limiter=self._decode_slots)

    async def scores(self, tensor: np.ndarray, transport: HandoffMode, timer: StageTimer) -> Scores:
        with timer.stage("handoff", {Attr.HANDOFF_TRANSPORT: transport, Attr.TENSOR_SHAPE: list(tensor.shape)}) as span:
            if transport == HandoffMode.V2_GRPC:
                scores_npy, answer_headers = await self._infer_v2_grpc(tensor, span)
            elif transport == HandoffMode.V2_HTTP:
                scores_npy, answer_headers = await self._infer_v2(tensor, span)
            else:
                response = await self._hand_off(tensor, transport, span)
                scores_npy, answer_headers = response.content, dict(response.headers)
        answer_headers = {name.lower(): value for name, value in answer_headers.items()}
        timer.merge_header(answer_headers.get(SERVER_TIMING_HEADER.lower()))
        headers = {h: answer_headers[h.lower()] for h in MODEL_HEADERS if h.lower() in answer_headers}
        headers[SERVER_TIMING_HEADER] = timer.header()
        headers[TENSOR_TRANSPORT_HEADER] = transport
        return Scores(scores_npy, headers)

    async def _infer_v2_grpc(self, tensor: np.ndarray, span: Span) -> tuple[bytes, dict[str, str]]:
        """The Open Inference Protocol's gRPC ``ModelInfer`` (raw bytes both ways)."""
        if self.model_grpc is None:
            raise RuntimeError("v2-grpc without a gRPC client")
        span.set_attribute(Attr.TENSOR_BYTES, tensor.nbytes)
        metrics.HANDOFF_BYTES.labels(HandoffMode.V2_GRPC).observe(tensor.nbytes)
        logits, headers = await self.model_grpc.logits(self.settings.model_v2_name, tensor)
        return codec.encode(logits), headers

    async def _infer_v2(self, tensor: np.ndarray, span: Span) -> tuple[bytes, dict[str, str]]:
        """The Open Inference Protocol's ``infer`` with binary data both ways: the scores as ``.npy``
        (what preprocess answers) and the model's response (its headers travel up the chain)."""
        body, json_length = open_inference.encode_request(
            {MODEL_INPUT_NAME: tensor}, [open_inference.RequestedOutput(MODEL_OUTPUT_NAME, binary=True)]
        )
        span.set_attribute(Attr.TENSOR_BYTES, tensor.nbytes)
        span.set_attribute(Attr.HANDOFF_BODY_BYTES, len(body))
        metrics.HANDOFF_BYTES.labels(HandoffMode.V2_HTTP).observe(tensor.nbytes)
        headers = {"Content-Type": "application/octet-stream", INFERENCE_HEADER_LENGTH_HEADER: str(json_length)}
        path = f"{OPEN_INFERENCE_PREFIX}/models/{self.settings.model_v2_name}/infer"
        response = await self.model.post(path, content=body, headers=headers)
        try:
            answer = open_inference.decode_response(
                response.content, response.headers.get(INFERENCE_HEADER_LENGTH_HEADER), max_elements=MAX_SCORES
            )
            logits = answer.outputs[MODEL_OUTPUT_NAME]
        except BadRequest as exc:  # the model's answer, not our request, is malformed (our decoder's words)
            raise BadGateway(f"the model's Open Inference Protocol answer is unusable: {exc.message}") from None
        except KeyError:
            raise BadGateway(
                f"the model's Open Inference Protocol answer has no output {MODEL_OUTPUT_NAME!r}"
            ) from None
        headers = dict(response.headers)
        if answer.model_name and MODEL_NAME_HEADER.lower() not in {h.lower() for h in headers}:
            headers[MODEL_NAME_HEADER] = answer.model_name  # a Triton or KServe server names it only here
        return codec.encode(logits), headers

    async def _hand_off(self, tensor: np.ndarray, transport: HandoffMode, span: Span) -> httpx.Response:
        """Send ``tensor`` to the model the ``transport`` way; the model's answer."""
        shared_dir = self.settings.shared_data_dir
        if transport == HandoffMode.HTTP:
            body, media_type = codec.encode(tensor), NPY_MEDIA_TYPE
        elif transport == HandoffMode.JSON:
            body = await anyio.to_thread.run_sync(handoff.encode_json, tensor)  # tens of ms of float formatting
            media_type = JSON_TENSOR_MEDIA_TYPE
        else:
            start = time.perf_counter()
            name, size = await anyio.to_thread.run_sync(handoff.write_tensor, shared_dir, tensor)
            span.set_attribute(Attr.HANDOFF_FILE_WRITE_MS, (time.perf_counter() - start) * 1000)
            span.set_attribute(Attr.HANDOFF_FILE_BYTES, size)
            body, media_type = handoff.encode_reference(name), TENSOR_REFERENCE_MEDIA_TYPE
        tensor_bytes = size if transport == HandoffMode.VOLUME else len(body)
        span.set_attribute(Attr.TENSOR_BYTES, tensor_bytes)
        span.set_attribute(Attr.HANDOFF_BODY_BYTES, len(body))
        metrics.HANDOFF_BYTES.labels(transport).observe(tensor_bytes)
        try:
            return await self.model.post("/predict", content=body, headers={"Content-Type": media_type})
        finally:
            if (
                transport == HandoffMode.VOLUME
            ):  # answered or failed (after any retries on other replicas): done with it
                await anyio.to_thread.run_sync(handoff.remove, shared_dir, name)

    async def sweep_forever(self) -> None:
        """Remove hand-off files a crash left behind (older than the TTL), every half TTL."""
        shared_dir, ttl_s = self.settings.shared_data_dir, self.settings.handoff_file_ttl_s
        while True:
            try:
                removed = await anyio.to_thread.run_sync(handoff.sweep, shared_dir, ttl_s)
                if removed:
                    log.warning("swept %d orphaned hand-off file(s) from %s", removed, shared_dir)
            except OSError as exc:
                log.warning("sweeping %s failed: %s", shared_dir, exc)
            await asyncio.sleep(ttl_s / 2)
