"""The pipeline's failures as plain exceptions, for the core and the web layer alike.

Each has a status (HTTP's numbers: the one protocol every caller of the pipeline speaks), a stable
machine-readable code and a human message. No web framework here: ``ml_pipeline.web.envelope`` turns
them into the one error envelope, in one place.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A failure with an HTTP status, a stable machine-readable code and a human message."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        service: str | None = None,
        retry_after_s: float | None = None,
        detail: str | None = None,
    ):
        self.status = status or self.status
        self.code = code or self.code
        self.message = message  # what the client is told: what went wrong, never an address or a class
        self.service = service  # set when the error comes from another service
        self.retry_after_s = retry_after_s  # when to try again (overload): `Retry-After` + the envelope
        self.detail = detail  # for operators only (the replica's URL, the exception): logged, never sent
        super().__init__(message)


class BadRequest(PipelineError):
    status, code = 400, "bad_request"


class InvalidTensor(BadRequest):
    """A tensor the pipeline does not take: not a well-formed .npy/JSON/protocol tensor, or not the
    model's shape, dtype, batch size or finite values."""

    code = "invalid_tensor"


class PayloadTooLarge(PipelineError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(PipelineError):
    status, code = 415, "unsupported_media_type"


class DownstreamUnavailable(PipelineError):
    status, code = 503, "downstream_unavailable"


class DownstreamTimeout(PipelineError):
    status, code = 504, "downstream_timeout"


class BadGateway(PipelineError):
    status, code = 502, "bad_gateway"


class NotReady(PipelineError):
    status, code = 503, "not_ready"


class Overloaded(PipelineError):
    """Refused at the door: the service has as much work in flight and queued as it allows."""

    status, code = 503, "overloaded"


class DeadlineExceeded(PipelineError):
    """The request's deadline (its own or the caller's) passed before the work could be done."""

    status, code = 504, "deadline_exceeded"


class RequestTimeout(PipelineError):
    """The client did not send its whole body before the request's deadline."""

    status, code = 408, "request_timeout"
