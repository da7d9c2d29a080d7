"""Every name that crosses a process boundary, defined once: hand-off transports, media types,
header names, the OpenAPI snippets of binary bodies, and the span attribute keys.

Span attributes follow OpenTelemetry's semantic conventions where one exists (``error.type``,
``service.instance.id``, the HTTP instrumentations' own); the pipeline's own are namespaced
``ml_pipeline.*``. docs/observability.md's tracing section lists every key of ``Attr`` (a test checks it, and
that the spans the services emit carry no other custom key). Imports nothing: the core may use it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

# --------------------------------------------------------------------------- hand-off (preprocess → model)


class HandoffMode(StrEnum):
    """How one tensor travels from preprocess to the model, one name everywhere: the span attribute
    ``ml_pipeline.handoff.transport``, the ``X-Tensor-Transport`` header, the hand-off metric's
    ``transport`` label and ``/process?transport=``. The first three go to the model's own
    ``/predict`` (``TRANSPORT``, with ``MODEL_PROTOCOL=npy``), the last two speak the Open Inference
    Protocol (``MODEL_PROTOCOL``)."""

    HTTP = "http"  # a binary .npy body
    JSON = "json"  # floats as JSON text: the slow baseline
    VOLUME = "volume"  # a file on the shared volume, only its name sent
    V2_HTTP = "v2-http"
    V2_GRPC = "v2-grpc"


PREDICT_HANDOFFS: Final = (HandoffMode.HTTP, HandoffMode.JSON, HandoffMode.VOLUME)  # TRANSPORT's values
# MODEL_PROTOCOL's values: npy (/predict, the hand-off TRANSPORT says), or one of the protocol's two.
MODEL_PROTOCOLS: Final = ("npy", HandoffMode.V2_HTTP.value, HandoffMode.V2_GRPC.value)

NPY_MEDIA_TYPE: Final = "application/x-npy"  # a binary NumPy .npy body (ml_pipeline.core.codec)
JSON_TENSOR_MEDIA_TYPE: Final = "application/json"  # {"shape", "dtype", "data"}: the slow baseline
TENSOR_REFERENCE_MEDIA_TYPE: Final = "application/vnd.ml-pipeline.tensor-ref+json"  # {"name": "<file>"}
TRANSPORT_BY_MEDIA_TYPE: Final = {
    NPY_MEDIA_TYPE: HandoffMode.HTTP,
    JSON_TENSOR_MEDIA_TYPE: HandoffMode.JSON,
    TENSOR_REFERENCE_MEDIA_TYPE: HandoffMode.VOLUME,
}

# The Open Inference Protocol (KServe v2): its routes, and the binary tensor extension's header.
OPEN_INFERENCE_PREFIX: Final = "/v2"
INFERENCE_HEADER_LENGTH_HEADER: Final = "Inference-Header-Content-Length"  # bytes of JSON before the binary data
MODEL_INPUT_NAME: Final = "input"  # the model's tensors, as the protocol names them (model.convert's graph too)
MODEL_OUTPUT_NAME: Final = "logits"

# --------------------------------------------------------------------------- headers

TRACE_ID_HEADER: Final = "X-Trace-Id"  # every response: the trace to look up in Jaeger
SERVER_TIMING_HEADER: Final = "Server-Timing"  # <service>.<stage>;dur=<ms>, merged hop by hop
REQUEST_TIMEOUT_HEADER: Final = "X-Request-Timeout-Ms"  # the deadline each hop passes on
TENSOR_TRANSPORT_HEADER: Final = "X-Tensor-Transport"  # preprocess: which hand-off was used
MODEL_NAME_HEADER: Final = "X-Model-Name"
MODEL_BACKEND_HEADER: Final = "X-Model-Backend"
MODEL_INSTANCE_HEADER: Final = "X-Model-Instance"  # which replica answered (its service.instance.id)
MODEL_HEADERS: Final = (MODEL_NAME_HEADER, MODEL_BACKEND_HEADER, MODEL_INSTANCE_HEADER)  # passed back up the chain

# --------------------------------------------------------------------------- OpenAPI

BINARY_NPY_CONTENT: Final[dict[str, Any]] = {NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}


# --------------------------------------------------------------------------- span attributes


class Attr:
    """Span attribute and event names the services set (beyond their instrumentations')."""

    # images (preprocess's decode/resize stages, postprocess's forward)
    IMAGE_BYTES: Final = "ml_pipeline.image.bytes"
    IMAGE_WIDTH: Final = "ml_pipeline.image.width"
    IMAGE_HEIGHT: Final = "ml_pipeline.image.height"
    RESIZE_SHORT_SIDE: Final = "ml_pipeline.resize.short_side"
    CROP_SIZE: Final = "ml_pipeline.crop.size"
    # tensors
    TENSOR_SHAPE: Final = "ml_pipeline.tensor.shape"
    TENSOR_BYTES: Final = "ml_pipeline.tensor.bytes"  # what crosses from preprocess to the model
    TENSOR_DTYPE: Final = "ml_pipeline.tensor.dtype"
    # the hand-off
    HANDOFF_TRANSPORT: Final = "ml_pipeline.handoff.transport"
    HANDOFF_BODY_BYTES: Final = "ml_pipeline.handoff.body.bytes"  # what goes over HTTP (a name, for volume)
    HANDOFF_FILE_BYTES: Final = "ml_pipeline.handoff.file.bytes"
    HANDOFF_FILE_WRITE_MS: Final = "ml_pipeline.handoff.file.write_ms"
    HANDOFF_FILE_READ_MS: Final = "ml_pipeline.handoff.file.read_ms"
    # inference
    MODEL_NAME: Final = "ml_pipeline.model.name"
    MODEL_BACKEND: Final = "ml_pipeline.model.backend"
    BATCH_SIZE: Final = "ml_pipeline.batch.size"
    BATCH_REQUESTS: Final = "ml_pipeline.batch.requests"  # on a dynamic batch's span: the requests in it
    BATCH_QUEUE_MS: Final = "ml_pipeline.batch.queue_ms"  # how long its oldest request waited
    INFERENCE_QUEUE_MS: Final = "ml_pipeline.inference.queue_ms"  # waited for a run slot (MAX_CONCURRENT_INFERENCES)
    # postprocess
    CACHE_HIT: Final = "ml_pipeline.cache.hit"
    PREDICTION_CLASS_ID: Final = "ml_pipeline.prediction.class_id"
    PREDICTION_SCORE: Final = "ml_pipeline.prediction.score"
    # calls to the next service (preprocess → model, postprocess → preprocess)
    DOWNSTREAM_ENDPOINT: Final = "ml_pipeline.downstream.endpoint"  # the replica that answered
    DOWNSTREAM_ATTEMPTS: Final = "ml_pipeline.downstream.attempts"
    DOWNSTREAM_RETRY_BUDGET_EXHAUSTED: Final = "ml_pipeline.downstream.retry_budget_exhausted"
    ATTEMPT_FAILED_EVENT: Final = "ml_pipeline.downstream.attempt_failed"  # event; carries ERROR_TYPE and the endpoint
    ERROR_TYPE: Final = "error.type"  # semantic conventions: why the attempt failed (a server span: its 5xx)
    # the server span of each request (semantic conventions' HTTP server span)
    HTTP_REQUEST_METHOD: Final = "http.request.method"
    HTTP_REQUEST_METHOD_ORIGINAL: Final = "http.request.method_original"
    HTTP_ROUTE: Final = "http.route"
    HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
    URL_SCHEME: Final = "url.scheme"
    URL_PATH: Final = "url.path"
    NETWORK_PROTOCOL_VERSION: Final = "network.protocol.version"
    CLIENT_ADDRESS: Final = "client.address"
    # the CLIENT span of each call to the next hop (semantic conventions' HTTP client span)
    URL_FULL: Final = "url.full"
    SERVER_ADDRESS: Final = "server.address"
    SERVER_PORT: Final = "server.port"
    HTTP_REQUEST_RESEND_COUNT: Final = "http.request.resend_count"
    # the public edge
    LINK_KIND: Final = "ml_pipeline.link"  # on the link to an untrusted caller's span


def span_attribute_keys() -> dict[str, str]:
    """``Attr``'s constants: name → key."""
    return {name: value for name, value in vars(Attr).items() if name.isupper()}
