"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on its own port
(``GRPC_PORT``), served from the model process's event loop by the same ``Predictor`` as the HTTP
routes.

Like an HTTP request, every call is traced (OpenTelemetry's gRPC instrumentation continues the W3C
context from the call's metadata), counted in the request metrics (route: the method's full name,
method ``GRPC``, status: the HTTP status its gRPC code stands for), logged in one line, bounded by
the caller's gRPC deadline (and ``REQUEST_TIMEOUT_S``), and refused with ``RESOURCE_EXHAUSTED``
beyond ``MAX_IN_FLIGHT`` + ``MAX_QUEUE`` calls at once. Errors are the protocol's: a gRPC status
with the message. The answer's trailing metadata carries ``x-trace-id``, and its initial metadata
the model's name, backend and replica (as the HTTP headers do).

Requests arrive as bytes and are parsed by the handler (``open_inference_grpc.parse``): bytes that
are no such message are ``INVALID_ARGUMENT`` saying so, not gRPC's ``UNKNOWN``; a failure of ours is
``INTERNAL`` with no exception's name or words (those go to the log). Messages are bounded by the
largest binary batch (``max_grpc_bytes``), not by the JSON limit: FP32 travels as 4 bytes a float.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import grpc
import numpy as np
from grpc import aio
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from ml_pipeline import __version__
from ml_pipeline.core import deadline
from ml_pipeline.core import open_inference_grpc as grpc_codec
from ml_pipeline.core.errors import PipelineError
from ml_pipeline.core.open_inference import InferenceRequest
from ml_pipeline.core.wire import TRACE_ID_HEADER, HandoffMode
from ml_pipeline.observability.asgi import CLIENT_CLOSED
from ml_pipeline.observability.requests import record_request
from ml_pipeline.observability.stages import StageTimer
from ml_pipeline.observability.tracing import current_trace_id
from ml_pipeline.settings import ModelSettings
from model.dataplane import MODEL_VERSION, Predictor
from model.metadata import answer_headers
from model.v2_endpoints import EXTENSIONS, SERVER_NAME

# A PipelineError's HTTP status → the gRPC code that means the same.
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# A gRPC code → the HTTP status the request metrics record for it.
HTTP_STATUSES = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: CLIENT_CLOSED,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}
# The codes whose server span OpenTelemetry's gRPC instrumentation marks ERROR (a RESOURCE_EXHAUSTED
# refusal is not): what the tail sampler's errors policy sees, so what an exemplar may rely on.
SPAN_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

Handler = Callable[[bytes, aio.ServicerContext], Awaitable[Any]]
log = logging.getLogger("model.grpc")


class OpenInferenceService:
    """The protocol's six methods and Triton's ``ModelConfig`` and ``ModelStatistics``; each takes a
    request message and answers a response message."""

    def __init__(self, predictor: Predictor, settings: ModelSettings, tracer: trace.Tracer, service: str):
        self.predictor = predictor
        self.settings = settings
        self.tracer = tracer
        self.service = service
        self.messages = grpc_codec.messages

    async def ServerLive(self, request: Any, context: aio.ServicerContext) -> Any:
        return self.messages["ServerLiveResponse"](live=True)

    async def ServerReady(self, request: Any, context: aio.ServicerContext) -> Any:
        return self.messages["ServerReadyResponse"](ready=self.predictor.ready()[0])

    async def ModelReady(self, request: Any, context: aio.ServicerContext) -> Any:
        if not self.predictor.ready()[0]:
            return self.messages["ModelReadyResponse"](ready=False)
        self.predictor.served(request.name, request.version or None)
        return self.messages["ModelReadyResponse"](ready=True)

    async def ServerMetadata(self, request: Any, context: aio.ServicerContext) -> Any:
        return self.messages["ServerMetadataResponse"](name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: Any, context: aio.ServicerContext) -> Any:
        metadata = self.predictor.metadata(request.name, request.version or None)
        response = self.messages["ModelMetadataResponse"](
            name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"]
        )
        for kind in ("inputs", "outputs"):
            for tensor in metadata[kind]:
                getattr(response, kind).add(**tensor)
        return response

    async def ModelConfig(self, request: Any, context: aio.ServicerContext) -> Any:
        return grpc_codec.model_config(self.predictor.config(request.name, request.version or None))

    async def ModelStatistics(self, request: Any, context: aio.ServicerContext) -> Any:
        report = self.predictor.statistics_report(request.name or None, request.version or None)
        return grpc_codec.model_statistics(report)

    async def ModelInfer(self, request: Any, context: aio.ServicerContext) -> Any:
        timer = StageTimer(self.tracer, self.service)
        decode = partial(grpc_codec.decode_request, request, max_elements=self.predictor.max_elements)

        def encode(decoded: InferenceRequest, outputs: dict[str, np.ndarray]) -> Any:
            return grpc_codec.encode_response(request.model_name, MODEL_VERSION, outputs, decoded.id)

        response = await self.predictor.infer(
            request.model_name,
            request.model_version or None,
            decode,
            encode,
            timer,
            transport=HandoffMode.V2_GRPC,
            body_bytes=request.ByteSize(),
            offload=not request.raw_input_contents,  # typed lists take a while to read; raw bytes are views
        )
        headers = answer_headers(self.predictor, timer)
        await context.send_initial_metadata([(name.lower(), value) for name, value in headers.items()])
        return response

    def handler(self, method: str) -> Handler:
        """``method`` with its request parsed, the request's deadline, its metrics and log line, and
        errors as gRPC statuses."""
        call = getattr(self, method)
        route = f"/{grpc_codec.SERVICE}/{method}"
        request_type = grpc_codec.METHODS[method][0]

        async def handle(data: bytes, context: aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            left = context.time_remaining()
            token = deadline.start(
                self.settings.request_timeout_s if left is None else min(left, self.settings.request_timeout_s)
            )
            try:
                response = await call(grpc_codec.parse(request_type, data), context)
                context.set_trailing_metadata(self._trace_metadata())
                return response
            except PipelineError as error:
                code = GRPC_CODES.get(error.status, grpc.StatusCode.INTERNAL)
                await context.abort(code, error.message, trailing_metadata=self._trace_metadata())
            except aio.AbortError:
                raise
            except Exception:  # gRPC itself would answer UNKNOWN with the exception's class and words
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s", route)
                await context.abort(code, "internal error", trailing_metadata=self._trace_metadata())
            finally:
                deadline.reset(token)
                status = HTTP_STATUSES.get(code, 500)
                elapsed = time.perf_counter() - start
                record_request(self.service, route, "GRPC", route, status, elapsed, error=code in SPAN_ERROR_CODES)

        return handle

    @staticmethod
    def _trace_metadata() -> tuple[tuple[str, str], ...]:
        trace_id = current_trace_id()
        return ((TRACE_ID_HEADER.lower(), trace_id),) if trace_id else ()


async def start_grpc_server(
    predictor: Predictor, settings: ModelSettings, provider: trace.TracerProvider, tracer: trace.Tracer, service: str
) -> tuple[aio.Server, int]:
    """The started server and the port it listens on (``GRPC_PORT``; 0: a free one)."""
    server = aio.server(
        interceptors=[aio_server_interceptor(tracer_provider=provider)],
        maximum_concurrent_rpcs=settings.max_in_flight + settings.max_queue,
        options=[
            ("grpc.max_receive_message_length", predictor.max_grpc_bytes),
            ("grpc.max_send_message_length", predictor.max_grpc_bytes),
            # Clients reconnect, and so re-resolve the service name, every ~15 s (gRPC adds ±10 % jitter):
            # a scaled-up replica gets its share; calls in flight finish within the request deadline.
            ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.request_timeout_s * 1000)),
        ],
    )
    implementation = OpenInferenceService(predictor, settings, tracer, service)
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            implementation.handler(method),  # parses the request bytes itself
            response_serializer=response_type.SerializeToString,
        )
        for method, (_, response_type) in grpc_codec.METHODS.items()
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(grpc_codec.SERVICE, handlers)])
    port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    await server.start()
    return server, port
