"""The model's data plane: a request body in one of the hand-off encodings → validated batch →
logits. No web framework here: ``model.app``'s route reads the body and writes the answer.

Every request that reaches a model here, by ``/predict``, the protocol's REST or its gRPC, is
counted in the model's statistics (``model.statistics``: Triton's statistics extension) from the
timings of its stages (``tensor_decode``, ``inference``, ``tensor_encode``: its spans').
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
import numpy as np
from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from ml_pipeline.core import codec, deadline, handoff, open_inference
from ml_pipeline.core.errors import InvalidTensor
from ml_pipeline.core.open_inference import InferenceRequest, ModelNotFound, shown
from ml_pipeline.core.wire import Attr, HandoffMode
from ml_pipeline.observability import metrics
from ml_pipeline.observability.stages import StageTimer
from ml_pipeline.settings import ModelSettings
from model.backends import INPUT_SHAPE, Backend, load_backend, readiness
from model.batcher import DynamicBatcher
from model.convert import INPUT_NAME, NUM_CLASSES, OUTPUT_NAME
from model.statistics import ModelStatistics, RequestTimings

MODEL_VERSION = "1"  # the one version served (the protocol's routes may name it)
NPY_HEADER_BYTES = 4096  # room for a .npy header, however it is padded
REFERENCE_MAX_BYTES = 1024  # {"name": "<32 hex>.npy"} is ~50 bytes: no megabytes for json.loads
# A float32 as Python's json writes it (`.tolist()`, ", " between): normalized pixels and normals
# average 20.4-20.6 bytes, the longest (-1.2345678e-05 written to 17 digits) 25; preprocess's own
# values (k/128) at most 12. 24 a float holds any realistic batch; the JSON budget, not this, bounds
# what parsing it may cost.
JSON_BYTES_PER_FLOAT = 24
GRPC_OVERHEAD_BYTES = 64 * 1024  # a ModelInferRequest's names, shape and parameters beside its tensor bytes
INLINE_JSON_BYTES = 64 * 1024  # a v2 request with more JSON than this is decoded in a worker thread
T = TypeVar("T")


def validate_batch(x: np.ndarray, max_batch: int, what: str = "tensor") -> None:
    """``x`` is a batch the model takes, or a 400 saying why (``what``: the tensor, as the client named it).

    Non-finite values are refused on every route, the protocol's included, where Triton would pass
    them on: the model takes normalized pixels, a NaN or an infinity in one makes every score of its
    image NaN, and the answer would look like one (issue 31; docs/open-inference.md)."""
    if x.ndim != 4 or x.shape[1:] != INPUT_SHAPE:
        raise InvalidTensor(f"tensor shape {list(x.shape)} is not [N,{','.join(map(str, INPUT_SHAPE))}]")
    if x.dtype != np.float32:
        raise InvalidTensor(f"tensor dtype {x.dtype} is not float32")
    if not 1 <= x.shape[0] <= max_batch:
        raise InvalidTensor(f"batch size {x.shape[0]} is outside 1..{max_batch}")
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        first = [int(i) for i in np.unravel_index(bad[0], x.shape)]
        raise InvalidTensor(
            f"{what} holds {bad.size} NaN or infinite values of {x.size} (the first at {first}): the model "
            "takes finite float32 values (normalized pixels); random bytes as float32 are no such input"
        )


@dataclass(frozen=True)
class ModelIdentity:
    """Who answered: what the routes name in their answers' headers (or gRPC metadata)."""

    name: str
    backend: str
    instance: str


class Predictor:
    """Loads the backend once (in a worker thread: seconds, converting on a first local run) and
    answers batches in any hand-off encoding, each bounded by its own body limit."""

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.backend: Backend | None = None  # until load() finished: /ready says "loading"
        floats = settings.max_batch * int(np.prod(INPUT_SHAPE))
        self.max_tensor_bytes = floats * 4 + NPY_HEADER_BYTES  # a binary body: .npy, or v2's raw bytes over gRPC
        self.max_grpc_bytes = self.max_tensor_bytes + GRPC_OVERHEAD_BYTES  # raw or packed FP32: 4 bytes a float
        # A JSON body (/predict's JSON hand-off, a v2 request): the largest batch written as JSON text.
        self.max_json_bytes = floats * JSON_BYTES_PER_FLOAT + NPY_HEADER_BYTES
        self.max_body_bytes = self.max_json_bytes  # the largest any route takes: the app-wide bound
        self.max_elements = floats  # of any one tensor a request may bring
        # What a JSON body may hold, counted before it is parsed: the largest batch as nested lists.
        self.json_budget = codec.JsonBudget.for_shape((settings.max_batch, *INPUT_SHAPE))
        self.batcher: DynamicBatcher | None = None  # DYNAMIC_BATCHING: requests' tensors run together
        # Runs at once (MAX_CONCURRENT_INFERENCES); a request waiting for its turn is queued, as in a batcher.
        self._inference_slots = anyio.CapacityLimiter(settings.max_concurrent_inferences)
        self.statistics = ModelStatistics()  # Triton's statistics extension, of every route

    async def load(self, tracer: trace.Tracer | None = None) -> None:
        self.backend = await anyio.to_thread.run_sync(load_backend, self.settings)
        self.statistics.add(self.backend.name, MODEL_VERSION)
        metrics.MODEL_INFO.info({"name": self.backend.name, "backend": self.backend.kind})
        if self.settings.dynamic_batching:
            self.batcher = DynamicBatcher(
                self._execute,
                max_batch_size=self.settings.max_batch,
                max_queue_delay_s=self.settings.max_queue_delay_ms / 1000,
                preferred_sizes=self.settings.preferred_batch_sizes,
                tracer=tracer or trace.NoOpTracer(),
            )
            self.batcher.start()

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    def ready(self) -> tuple[bool, str]:
        return readiness(self.backend)

    def body_limit(self, transport: HandoffMode) -> int:
        """A binary body gets the tensor's size, a file reference a few hundred bytes; only the
        JSON baseline needs more."""
        limits = {HandoffMode.JSON: self.max_json_bytes, HandoffMode.VOLUME: REFERENCE_MAX_BYTES}
        return limits.get(transport, self.max_tensor_bytes)

    async def predict(self, body: bytes, transport: HandoffMode, timer: StageTimer) -> bytes:
        """The batch's logits as a ``.npy`` body."""
        backend = self._loaded()
        with self._counted(backend, timer) as counted:
            with timer.stage(
                "tensor_decode", {Attr.HANDOFF_TRANSPORT: transport, Attr.HANDOFF_BODY_BYTES: len(body)}
            ) as span:
                if transport == HandoffMode.HTTP:
                    batch = codec.decode(body)
                elif transport == HandoffMode.JSON:
                    batch = await anyio.to_thread.run_sync(handoff.decode_json, body, self.json_budget)
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
            logits = await self._infer(backend, batch, timer, counted)
            with timer.stage("tensor_encode"):
                answer = codec.encode(logits)
        return answer

    def identity(self) -> ModelIdentity | None:
        """The model and replica an answer names; None in protocol-only mode (like Triton's answers)."""
        backend = self._loaded()
        if self.settings.open_inference_only:
            return None
        return ModelIdentity(backend.name, backend.kind, self.settings.service_instance_id)

    def _loaded(self) -> Backend:
        if self.backend is None:  # the lifespan loads it before the first request is served
            raise RuntimeError("the model is used before load()")
        return self.backend

    async def _infer(self, backend: Backend, batch: np.ndarray, timer: StageTimer, counted: _Counted) -> np.ndarray:
        deadline.check("inference")  # whoever asked has stopped waiting
        attributes = {Attr.MODEL_NAME: backend.name, Attr.MODEL_BACKEND: backend.kind, Attr.BATCH_SIZE: batch.shape[0]}
        counted.inferences = batch.shape[0]
        with timer.stage("inference", attributes) as span:
            if self.batcher is not None:
                logits, queued_s = await self.batcher.submit_timed(batch)
                counted.queue_ns = int(queued_s * 1e9)
                return logits
            slots = self._inference_slots
            try:
                slots.acquire_nowait()
            except anyio.WouldBlock:  # its turn comes when a run ends: that wait is the request's queue time
                queued_at = time.perf_counter_ns()
                await slots.acquire()
                counted.queue_ns = time.perf_counter_ns() - queued_at
                span.set_attribute(Attr.INFERENCE_QUEUE_MS, counted.queue_ns / 1e6)
            try:
                deadline.check("inference")  # it may have waited for its turn
                # Not cancellable once started: anyio waits for the thread, so the slot stays taken
                # while the core is busy.
                return await anyio.to_thread.run_sync(self._execute, batch)
            finally:
                slots.release()

    def _execute(self, batch: np.ndarray) -> np.ndarray:
        """One run of the model (in a worker thread; with dynamic batching, a batch of requests), counted."""
        backend = self._loaded()
        logits = backend.predict(batch)
        self.statistics.executed(backend.name, MODEL_VERSION)
        return logits

    @contextlib.contextmanager
    def _counted(self, backend: Backend, timer: StageTimer) -> Iterator[_Counted]:
        """One request of ``backend``'s model in its statistics: a success with its stages' timings
        (``timer``'s), or, whatever went wrong (a refused input too), a failure."""
        counted = _Counted(time.perf_counter_ns())
        try:
            yield counted
        except BaseException:
            self.statistics.failure(backend.name, MODEL_VERSION, total_ns=time.perf_counter_ns() - counted.start_ns)
            raise
        stages = timer.durations_ns
        timings = RequestTimings(
            total_ns=time.perf_counter_ns() - counted.start_ns,
            queue_ns=counted.queue_ns,
            compute_input_ns=stages["tensor_decode"],
            compute_infer_ns=stages["inference"] - counted.queue_ns,
            compute_output_ns=stages["tensor_encode"],
        )
        self.statistics.success(backend.name, MODEL_VERSION, inferences=counted.inferences, timings=timings)

    # ----------------------------------------------------------------------- Open Inference Protocol (v2)

    def served(self, name: str, version: str | None = None) -> Backend:
        """The backend serving model ``name`` (at ``version``); 404 for any other."""
        backend = self._loaded()
        if name != backend.name:
            raise ModelNotFound(f"unknown model {shown(name)}: this server serves {backend.name!r}")
        if version is not None and version != MODEL_VERSION:
            raise ModelNotFound(
                f"model {shown(name)} has no version {shown(version)}: it has version {MODEL_VERSION!r}"
            )
        return backend

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        backend = self.served(name, version)
        tensor = {"datatype": "FP32"}
        return {
            "name": backend.name,
            "versions": [MODEL_VERSION],
            "platform": PLATFORMS[backend.kind],
            "inputs": [{"name": INPUT_NAME, **tensor, "shape": [-1, *INPUT_SHAPE]}],
            "outputs": [{"name": output, **tensor, "shape": [-1, NUM_CLASSES]} for output in OUTPUTS],
        }

    def config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Triton's model configuration (``config.pbtxt`` as JSON), for tools that read it."""
        backend = self.served(name, version)
        tensor = {"data_type": "TYPE_FP32"}
        return {
            "name": backend.name,
            "platform": PLATFORMS[backend.kind],
            "backend": "onnxruntime" if backend.kind == "onnx" else "python",
            "max_batch_size": self.settings.max_batch,
            "input": [{"name": INPUT_NAME, **tensor, "format": "FORMAT_NCHW", "dims": list(INPUT_SHAPE)}],
            "output": [{"name": output, **tensor, "dims": [NUM_CLASSES]} for output in OUTPUTS],
            "version_policy": {"latest": {"num_versions": 1}},
            **self._batching_config(),
        }

    def statistics_report(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's statistics of every model (``name`` None), or of ``name`` (at ``version``); 404 for
        a model or version not served."""
        if name is not None:
            self.served(name, version)
        return self.statistics.report(name, version)

    def _batching_config(self) -> dict[str, Any]:
        """Triton's ``dynamic_batching`` block, when the model batches."""
        if self.batcher is None:
            return {}
        batching: dict[str, Any] = {"max_queue_delay_microseconds": int(self.settings.max_queue_delay_ms * 1000)}
        if self.batcher.preferred_sizes:
            batching["preferred_batch_size"] = self.batcher.preferred_sizes
        return {"dynamic_batching": batching}

    async def infer(
        self,
        name: str,
        version: str | None,
        decode: Callable[[], InferenceRequest],
        encode: Callable[[InferenceRequest, dict[str, np.ndarray]], T],
        timer: StageTimer,
        *,
        transport: HandoffMode,
        body_bytes: int,
        offload: bool,
        offload_encode: bool = False,
    ) -> T:
        """The Open Inference Protocol's ``infer``, whatever carried it: ``decode()`` reads the
        request (in a worker thread when ``offload``: inline JSON tensors take tens of ms);
        ``encode(request, outputs)`` writes the answer of the outputs it asks for (all by default),
        by name (in a worker thread when ``offload_encode``)."""
        backend = self.served(name, version)
        attributes: dict[str, AttributeValue] = {Attr.HANDOFF_TRANSPORT: transport, Attr.HANDOFF_BODY_BYTES: body_bytes}
        with self._counted(backend, timer) as counted:
            with timer.stage("tensor_decode", attributes) as span:
                request = await anyio.to_thread.run_sync(decode) if offload else decode()
                batch = self._input_batch(name, request)
                span.set_attribute(Attr.TENSOR_BYTES, batch.nbytes)
                span.set_attribute(Attr.TENSOR_SHAPE, list(batch.shape))
            wanted = [o.name for o in request.outputs] or list(OUTPUTS)
            unknown = sorted(set(wanted) - set(OUTPUTS))
            if unknown:
                raise open_inference.invalid(
                    f"model {shown(name)} has no output {shown(unknown[0])}; its outputs are {shown(list(OUTPUTS))}"
                )
            logits = await self._infer(backend, batch, timer, counted)
            with timer.stage("tensor_encode"):
                outputs = {output: OUTPUTS[output](logits) for output in wanted}
                write = partial(encode, request, outputs)
                answer = await anyio.to_thread.run_sync(write) if offload_encode else write()
        return answer

    async def infer_http(
        self, name: str, version: str | None, body: bytes, header_length: str | None, timer: StageTimer
    ) -> OpenInferenceAnswer:
        """``POST /v2/models/{name}[/versions/{version}]/infer``: each output inline or binary, as asked.
        Its JSON part is counted against ``json_budget`` before it is parsed, in a worker thread when
        it is large (a JSON part may carry the tensor inline, with or without a binary section)."""
        decode = partial(
            open_inference.decode_request,
            body,
            header_length,
            max_elements=self.max_elements,
            json_budget=self.json_budget,
        )
        offload = open_inference.json_length(len(body), header_length) > INLINE_JSON_BYTES

        def encode(request: InferenceRequest, outputs: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
            return open_inference.encode_response(name, MODEL_VERSION, outputs, request)

        answer, json_length = await self.infer(
            name,
            version,
            decode,
            encode,
            timer,
            transport=HandoffMode.V2_HTTP,
            body_bytes=len(body),
            offload=offload,
            offload_encode=True,
        )
        return OpenInferenceAnswer(answer, json_length)

    def _input_batch(self, name: str, request: InferenceRequest) -> np.ndarray:
        if set(request.inputs) != {INPUT_NAME}:
            raise open_inference.invalid(
                f"model {shown(name)} takes one input, {INPUT_NAME!r}; got {shown(sorted(request.inputs))}"
            )
        batch = request.inputs[INPUT_NAME]
        if batch.dtype != np.float32:
            raise open_inference.invalid(f"input {INPUT_NAME!r} must be FP32, not {open_inference.datatype_of(batch)}")
        validate_batch(batch, self.settings.max_batch, what=f"input {INPUT_NAME!r}")
        return batch


@dataclass
class _Counted:
    """What a request's statistics need beyond its stages' timings."""

    start_ns: int
    inferences: int = 0  # its samples
    queue_ns: int = 0  # waiting for its dynamic batch, or for a slot to run in (MAX_CONCURRENT_INFERENCES)


@dataclass(frozen=True)
class OpenInferenceAnswer:
    body: bytes
    json_length: int | None  # the Inference-Header-Content-Length of a body with binary outputs


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


# The model's outputs by name: the raw scores, and their softmax for clients that want probabilities.
OUTPUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {OUTPUT_NAME: lambda logits: logits, "probabilities": softmax}
PLATFORMS = {"onnx": "onnxruntime_onnx", "random": "python"}
