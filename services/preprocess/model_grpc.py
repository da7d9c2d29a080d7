"""preprocess's gRPC client of the model (``MODEL_PROTOCOL=v2-grpc``): the Open Inference Protocol's
``ModelInfer`` with raw tensor bytes, over one channel that balances over every address the
target resolves to (gRPC's ``round_robin``: every model replica), carrying the trace context
(OpenTelemetry's gRPC instrumentation) and the request's remaining deadline (the call's gRPC
deadline).

A call that fails ``UNAVAILABLE`` (a replica refused it, or died with it: inference is a pure
function of the tensor) is tried again by the HTTP hand-off's own retry policy
(``ml_pipeline.client.retry``: ``MODEL_MAX_ATTEMPTS``, the retry budget, a jittered pause within the
deadline; preprocess gives both clients one); ``round_robin`` sends the retry to the next replica and
skips one whose connection broke. gRPC's own retry policy covers only calls that never left.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import numpy as np
from grpc import StatusCode, aio
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from ml_pipeline.client.retry import RetryPolicy
from ml_pipeline.core import deadline
from ml_pipeline.core import open_inference_grpc as grpc_codec
from ml_pipeline.core.errors import BadGateway, BadRequest, DownstreamTimeout, DownstreamUnavailable, PipelineError
from ml_pipeline.core.wire import (
    MODEL_HEADERS,
    MODEL_INPUT_NAME,
    MODEL_NAME_HEADER,
    MODEL_OUTPUT_NAME,
    SERVER_TIMING_HEADER,
    Attr,
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_SCORES = 1_000_000  # elements of the model's answer read (a batch of one: 1000)
# gRPC's own retries: a call a replica refused as UNAVAILABLE (it never started) goes to another.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": grpc_codec.SERVICE}],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.01s",
                "maxBackoff": "0.1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
# Forwarded up the chain like the HTTP answer's headers (gRPC metadata keys are lower case).
_FORWARDED = {name.lower(): name for name in (*MODEL_HEADERS, SERVER_TIMING_HEADER)}


class GrpcModel:
    def __init__(
        self,
        target: str,
        timeout_s: float,
        tracer_provider: trace.TracerProvider,
        *,
        retry: RetryPolicy | None = None,
    ):
        self.target = target
        self._timeout_s = timeout_s
        self.retry = retry or RetryPolicy("model")
        self._channel = aio.insecure_channel(
            target,
            options=[
                ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # A `dns:///` target is resolved again when a connection ends (the server's max age, a replica
                # gone): at most every 5 s, not gRPC's default 30 s; and a replica that was down is retried
                # at least every 5 s (the default backoff grows to 120 s), so it gets traffic soon after it is back.
                ("grpc.dns_min_time_between_resolutions_ms", 5000),
                ("grpc.initial_reconnect_backoff_ms", 500),
                ("grpc.max_reconnect_backoff_ms", 5000),
            ],
            interceptors=aio_client_interceptors(tracer_provider=tracer_provider),
        )
        request_type, response_type = grpc_codec.METHODS["ModelInfer"]
        self._model_infer = self._channel.unary_unary(
            f"/{grpc_codec.SERVICE}/ModelInfer",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )

    async def aclose(self) -> None:
        await self._channel.close()

    async def logits(self, model_name: str, tensor: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
        """The model's scores for ``tensor``, and the answer's headers to pass on."""
        deadline.check("calling the model")
        left = deadline.remaining()
        timeout_s = self._timeout_s if left is None else min(left, self._timeout_s)
        call_deadline = time.monotonic() + timeout_s
        request = grpc_codec.encode_request(model_name, {MODEL_INPUT_NAME: tensor}, [MODEL_OUTPUT_NAME])
        self.retry.record_call()
        span = trace.get_current_span()
        for attempt in itertools.count(1):
            call = self._model_infer(request, timeout=max(call_deadline - time.monotonic(), 0.001))
            try:
                response = await call
                metadata = await call.initial_metadata()
                break
            except aio.AioRpcError as error:
                retryable = error.code() == StatusCode.UNAVAILABLE
                span.add_event(
                    Attr.ATTEMPT_FAILED_EVENT,
                    {Attr.DOWNSTREAM_ENDPOINT: self.target, Attr.ERROR_TYPE: error.code().name.lower()},
                )
                if not retryable or not await self.retry.another_attempt(attempt, "unavailable", call_deadline):
                    raise self._error(error, timeout_s) from None
        span.set_attribute(Attr.DOWNSTREAM_ATTEMPTS, attempt)
        try:
            answer = grpc_codec.decode_response(response, max_elements=MAX_SCORES)
            logits = answer.outputs[MODEL_OUTPUT_NAME]
        except BadRequest as exc:  # the model's answer, not our request, is malformed (our decoder's words)
            raise BadGateway(f"the model's gRPC answer is unusable: {exc.message}") from None
        except KeyError:
            raise BadGateway(f"the model's gRPC answer has no output {MODEL_OUTPUT_NAME!r}") from None
        headers = {_FORWARDED[key]: value for key, value in _pairs(metadata) if key in _FORWARDED}
        if answer.model_name:
            headers.setdefault(MODEL_NAME_HEADER, answer.model_name)  # a Triton or KServe server names it only here
        return logits, headers

    def _error(self, error: aio.AioRpcError, timeout_s: float) -> PipelineError:
        """The client's words; the target and gRPC's own details (for UNAVAILABLE, the addresses
        it failed to connect to) go to the error's ``detail``, for the log."""
        code, details = error.code(), error.details() or ""
        detail = f"ModelInfer on {self.target}: {code.name}: {details}"
        if code == StatusCode.DEADLINE_EXCEEDED:
            return DownstreamTimeout(f"the model did not answer within {timeout_s:g} s", detail=detail)
        if code in (StatusCode.UNAVAILABLE, StatusCode.RESOURCE_EXHAUSTED):
            return DownstreamUnavailable(f"the model is unavailable (gRPC {code.name})", detail=detail)
        # Anything else (INVALID_ARGUMENT included): we built the request, so it is our chain's fault.
        # The details are the model's own answer (its error message), as over HTTP.
        return BadGateway(f"the model answered {code.name}: {details}", detail=detail)


def _pairs(metadata: Any) -> list[tuple[str, str]]:
    return [(str(key), value if isinstance(value, str) else value.decode("latin-1")) for key, value in (metadata or ())]
