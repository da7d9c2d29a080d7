"""One error envelope for every failure of every service.

Every error response is ``{"error": {"status", "code", "message", "service", "trace_id"}}`` with
the status as the HTTP status. ``PipelineError`` subclasses Starlette's ``HTTPException`` so that
FastAPI lets it through from body parsing (the upload size limit raises it there).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ml_pipeline.telemetry import TRACE_ID_HEADER, current_trace_id

log = logging.getLogger("ml_pipeline.errors")


class PipelineError(StarletteHTTPException):
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
    ):
        self.status = status or self.status
        self.code = code or self.code
        self.message = message
        self.service = service  # set when the error comes from another service
        self.retry_after_s = retry_after_s  # when to try again (overload): `Retry-After` + the envelope
        super().__init__(status_code=self.status, detail=message)


class BadRequest(PipelineError):
    status, code = 400, "bad_request"


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


def envelope(status: int, code: str, message: str, service: str, **extra: Any) -> dict[str, Any]:
    return {
        "error": {
            "status": status,
            "code": code,
            "message": message,
            "service": service,
            "trace_id": current_trace_id(),
            **extra,
        }
    }


def error_response(
    status: int, code: str, message: str, service: str, retry_after_s: float | None = None, **extra: Any
) -> JSONResponse:
    if retry_after_s is not None:
        extra["retry_after_s"] = retry_after_s
    body = envelope(status, code, message, service, **extra)
    headers = {TRACE_ID_HEADER: body["error"]["trace_id"]} if body["error"]["trace_id"] else {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))  # whole seconds (RFC 9110)
    return JSONResponse(body, status_code=status, headers=headers or None)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def install_error_handlers(app: FastAPI, service: str) -> None:
    """Route every exception of ``app`` through the one envelope."""

    async def pipeline_error(_: Request, exc: PipelineError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("request failed: %s (%s)", exc.message, exc.code, extra={"status": exc.status})
        return error_response(exc.status, exc.code, exc.message, exc.service or service, exc.retry_after_s)

    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
        return error_response(exc.status_code, code, str(exc.detail), service)

    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        message = "invalid request: " + "; ".join(problems)
        return error_response(422, "invalid_request", message, service, details=problems)

    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", f"internal error: {type(exc).__name__}", service)

    app.add_exception_handler(PipelineError, pipeline_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)
