"""One error envelope for every failure of every service, mapped from ``ml_pipeline.core.errors``.

Every error response is ``{"error": {"status", "code", "message", "service", "trace_id"}}`` with
the status as the HTTP status — except under ``/v2``, the Open Inference Protocol's routes, where
it is the protocol's ``{"error": "<message>"}`` (clients written for Triton or KServe read that);
the trace id is in the ``X-Trace-Id`` header either way. The only place exceptions become HTTP
answers.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ml_pipeline.core.errors import PipelineError
from ml_pipeline.core.wire import OPEN_INFERENCE_PREFIX, TRACE_ID_HEADER
from ml_pipeline.observability.tracing import current_trace_id

log = logging.getLogger("ml_pipeline.errors")


class RaisedWhileReadingBody(StarletteHTTPException):
    """Carries a ``PipelineError`` raised while FastAPI parses the request body (the body-size
    limit, the body deadline): FastAPI turns anything but an ``HTTPException`` raised there into
    a generic 400."""

    def __init__(self, error: PipelineError):
        self.error = error
        super().__init__(status_code=error.status, detail=error.message)


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


def speaks_open_inference(path: str) -> bool:
    """Whether ``path`` is one of the Open Inference Protocol's routes (their own error format)."""
    return path == OPEN_INFERENCE_PREFIX or path.startswith(OPEN_INFERENCE_PREFIX + "/")


def error_response(
    status: int,
    code: str,
    message: str,
    service: str,
    retry_after_s: float | None = None,
    *,
    path: str = "",
    **extra: Any,
) -> JSONResponse:
    """The answer for a failure of a request to ``path``."""
    if retry_after_s is not None:
        extra["retry_after_s"] = retry_after_s
    trace_id = current_trace_id()
    body = {"error": message} if speaks_open_inference(path) else envelope(status, code, message, service, **extra)
    headers = {TRACE_ID_HEADER: trace_id} if trace_id else {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))  # whole seconds (RFC 9110)
    return JSONResponse(body, status_code=status, headers=headers or None)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def install_error_handlers(app: FastAPI, service: str) -> None:
    """Route every exception of ``app`` through the one envelope."""

    async def pipeline_error(request: Request, exc: PipelineError) -> JSONResponse:
        if exc.status >= 500:
            if exc.detail:  # the operator's part (which replica, which exception): the log, not the answer
                log.warning(
                    "request failed: %s (%s): %s", exc.message, exc.code, exc.detail, extra={"status": exc.status}
                )
            else:
                log.warning("request failed: %s (%s)", exc.message, exc.code, extra={"status": exc.status})
        return error_response(
            exc.status, exc.code, exc.message, exc.service or service, exc.retry_after_s, path=request.url.path
        )

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, RaisedWhileReadingBody):
            return await pipeline_error(request, exc.error)
        code = _HTTP_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
        return error_response(exc.status_code, code, str(exc.detail), service, path=request.url.path)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        message = "invalid request: " + "; ".join(problems)
        return error_response(422, "invalid_request", message, service, path=request.url.path, details=problems)

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")  # the class and traceback, under the trace id the client gets
        return error_response(500, "internal_error", "internal error", service, path=request.url.path)

    # Starlette types every handler as taking `Exception`; each is registered for its own class.
    app.add_exception_handler(PipelineError, pipeline_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected_error)
