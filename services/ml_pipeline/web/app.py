"""What every service app shares: the FastAPI app with error envelope, telemetry, body-size
limit, ``/health`` and ``/ready``, and the multipart upload reader. (``/metrics`` is not on this
port: ``ml_pipeline.observability.metrics.serve_metrics`` serves it on an internal one.)"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from opentelemetry import trace
from starlette.datastructures import MutableHeaders, UploadFile  # FastAPI's UploadFile is one
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser
from starlette.routing import request_response

from ml_pipeline import __version__
from ml_pipeline.core import deadline
from ml_pipeline.core.errors import BadRequest, NotReady, PayloadTooLarge
from ml_pipeline.observability import metrics
from ml_pipeline.observability.asgi import RequestTelemetryMiddleware, instrument_app
from ml_pipeline.observability.sampling import TailSampling
from ml_pipeline.observability.tracing import shutdown_tracer_provider
from ml_pipeline.settings import ServiceSettings, UploadSettings
from ml_pipeline.web.admission import AdmissionControl, ends_body
from ml_pipeline.web.envelope import RaisedWhileReadingBody, error_response, install_error_handlers

# Multipart framing around an upload: boundaries, part headers. Bodies larger than the upload
# limit plus this are refused from their Content-Length before being read.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

ReadyCheck = Callable[[FastAPI], Awaitable[tuple[bool, str]]]
Endpoint = Callable[[Request], Awaitable[Response]]
E = TypeVar("E", bound=StrEnum)

# What a hot route's description lists for a request it cannot take (FastAPI lists it for routes
# whose parameters it checks itself): the error envelope, code `invalid_request`.
INVALID_REQUEST = {422: {"description": "Invalid request: the error envelope says what"}}
# The multipart form an upload comes in, for a hot route's description.
UPLOAD_FORM = {
    "type": "object",
    "properties": {"file": {"type": "string", "format": "binary", "description": "JPEG, PNG or WebP image"}},
    "required": ["file"],
}


class HotRoute(APIRoute):
    """A route on the request path: its endpoint takes the ``Request`` and returns a ``Response``.
    FastAPI describes it as any other route (its body and parameters given in ``openapi_extra``);
    Starlette's own ``request_response`` serves it, without FastAPI's per-request parameter
    solving, exit stacks and response checks: 25–30 µs a request, more where FastAPI had
    parameters to read (docs/profiling.md, "Hot routes")."""

    def __init__(self, path: str, endpoint: Endpoint, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        d = self.dependant
        if d.path_params or d.query_params or d.header_params or d.cookie_params or d.body_params or d.dependencies:
            raise TypeError(f"{path}: a hot route's endpoint takes the request alone")
        self.app = request_response(endpoint)


def query_choice(request: Request, name: str, choices: type[E]) -> E | None:
    """Query parameter ``name`` as one of ``choices`` (None when absent): a 422 otherwise, as FastAPI
    answers for an enum parameter."""
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return choices(value)
    except ValueError:
        allowed = " or ".join(repr(choice.value) for choice in choices)
        raise RequestValidationError(
            [{"type": "enum", "loc": ("query", name), "msg": f"Input should be {allowed}"}]
        ) from None


def query_parameter(name: str, choices: type[StrEnum], description: str, default: StrEnum | None = None) -> dict:
    """A hot route's optional query parameter ``name``, one of ``choices``, for its description."""
    schema: dict[str, Any] = {"type": "string", "enum": [choice.value for choice in choices]}
    if default is not None:
        schema["default"] = default.value
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def hot_post(app: FastAPI, path: str, **description: Any) -> Callable[[Endpoint], Endpoint]:
    """``@app.post(path, …)`` for a ``HotRoute``."""

    def register(endpoint: Endpoint) -> Endpoint:
        app.router.add_api_route(path, endpoint, methods=["POST"], route_class_override=HotRoute, **description)
        return endpoint

    return register


# A body the service answers before reading it all (413, a refusal) is read and dropped up to this
# many bytes first: closing with unread bytes makes the kernel send RST, and a client without
# `Expect: 100-continue` would see "connection reset" instead of the answer.
DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_TIMEOUT_S = 10.0
# Past the request's deadline, still this long: a client uploading slowly (not stalled) that is
# cut off with unread bytes gets a reset instead of the answer.
DRAIN_GRACE_S = 1.0


class BodySizeLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413: at once from Content-Length, or while
    streaming a chunked body (the error is raised into the body parser).

    Whatever the answer, a body the app left unread is drained before the response starts (up
    to ``DRAIN_MAX_BYTES`` and ``DRAIN_TIMEOUT_S``; beyond that the connection is closed), so the
    client reads the answer. Not for ``Expect: 100-continue`` clients: they have not sent it.
    """

    def __init__(self, app, max_bytes: int, service: str):
        self.app = app
        self.max_bytes = max_bytes
        self.service = service

    def _too_large(self, size: str) -> str:
        return f"request body of {size} exceeds the limit of {self.max_bytes} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        body = _BodyTracker(receive, expects_continue=headers.get(b"expect", b"").lower() == b"100-continue")
        send = body.draining_before(send)
        declared = headers.get(b"content-length")
        # bytes.isdigit() is ASCII digits only (b"\xb2", "²" in latin-1, is not one): int() cannot fail.
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(
                413, PayloadTooLarge.code, self._too_large(f"{int(declared)} bytes"), self.service, path=scope["path"]
            )
            await response(scope, body.receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await body.receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RaisedWhileReadingBody(PayloadTooLarge(self._too_large(f"more than {received} bytes")))
            return message

        await self.app(scope, limited_receive, send)


class _BodyTracker:
    """Knows whether the request body has been read to its end, and can drain the rest."""

    def __init__(self, receive, *, expects_continue: bool):
        self._receive = receive
        self._expects_continue = expects_continue
        self.complete = False

    async def receive(self):
        message = await self._receive()
        if ends_body(message):
            self.complete = True
        return message

    async def drain(self) -> bool:
        """Read and drop the rest of the body; False if it was too long or too slow to wait for
        (past ``DRAIN_TIMEOUT_S``, or ``DRAIN_GRACE_S`` after the request's deadline: a 408 for a
        body that stopped arriving is not held back 10 s)."""
        drained = 0
        left = deadline.remaining()
        wait_s = DRAIN_TIMEOUT_S if left is None else min(DRAIN_TIMEOUT_S, max(left, DRAIN_GRACE_S))
        try:
            async with asyncio.timeout(wait_s):
                while not self.complete:
                    message = await self.receive()
                    drained += len(message.get("body", b""))
                    if drained > DRAIN_MAX_BYTES:
                        return False
        except TimeoutError:
            return False
        return True

    def draining_before(self, send):
        async def send_after_drain(message):
            answering = message["type"] == "http.response.start"
            if answering and not self.complete and not self._expects_continue and not await self.drain():
                MutableHeaders(scope=message)["connection"] = "close"  # the rest is not worth waiting for
            await send(message)

        return send_after_drain


def freeze_startup_objects() -> None:
    """Move everything alive after startup (modules, the model, labels, the app) out of the cyclic
    garbage collector's reach: they live as long as the process, and each full collection walked
    them all with the event loop stopped — 47 ms on average, every ~200 requests, measured on the
    in-process chain (~1 ms frozen): pauses the soak's one-minute p99 felt."""
    gc.collect()
    gc.freeze()


def docs_routes_last(app: FastAPI) -> None:
    """Try the service's own routes before the documentation's (``/openapi.json``, ``/docs``, …),
    which FastAPI adds first: the router tries routes in order, ~4 µs each. The order among the
    service's routes is kept; no documentation path overlaps one of them."""
    app.router.routes.sort(key=lambda route: not getattr(route, "include_in_schema", True))


def keep_uploads_in_memory(max_body_bytes: int) -> None:
    """Multipart uploads up to the body limit stay in memory instead of spooling to ``/tmp`` past
    1 MiB: the body is in memory already (admission reads it first), a spooled copy costs ~60 %
    more CPU (22 vs 36 ms per 9 MB upload, docs/edge.md), and a small ``/tmp`` turned concurrent
    large uploads into 400s. Memory stays bounded by admission's body budget."""
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_body_bytes)


def build_app(
    service: str,
    settings: ServiceSettings,
    *,
    description: str,
    tracer_provider: trace.TracerProvider,
    resources: Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]],
    ready: ReadyCheck,
    max_body_bytes: int,
) -> FastAPI:
    """The skeleton of a service: ``resources(app)`` opens/closes what the service needs (HTTP
    client, model) around its lifetime; ``ready(app)`` answers the readiness probe."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with resources(app):
                docs_routes_last(app)
                freeze_startup_objects()
                yield
        finally:
            shutdown_tracer_provider(tracer_provider)  # flushes what is queued, bounded by the export timeout

    app = FastAPI(
        title=f"ml-pipeline {service}",
        version=__version__,
        description=description,
        lifespan=lifespan,
        # No redirect from `/finalize/` to `/finalize`: Starlette builds it from the request's `Host`
        # (and `X-Forwarded-Proto`), so any client could have us point elsewhere. A 404 instead.
        redirect_slashes=False,
        # The services make their own spans, metrics and logs (ml_pipeline.observability): FastAPI's
        # native telemetry would double them, and asking whether it is on cost ~12 µs a request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.service = service
    app.state.tracer = tracer_provider.get_tracer(f"ml_pipeline.{service}", __version__)
    install_error_handlers(app, service)
    keep_uploads_in_memory(max_body_bytes)
    _add_middleware(app, service, settings, max_body_bytes)
    _add_probe_routes(app, service, settings, ready)
    metrics.register_service(service, settings.service_instance_id)
    metrics.use_sampling(TailSampling(settings.trace_sampling, settings.trace_keep_percent, settings.trace_slow_ms))
    instrument_app(app, tracer_provider)
    return app


def _add_middleware(app: FastAPI, service: str, settings: ServiceSettings, max_body_bytes: int) -> None:
    # Outermost last: telemetry sees every answer (refusals too), the body guard drains before any.
    app.add_middleware(
        AdmissionControl,
        service=service,
        max_in_flight=settings.max_in_flight,
        max_queue=settings.max_queue,
        queue_timeout_s=settings.queue_timeout_s,
        request_timeout_s=settings.request_timeout_s,
        body_budget_bytes=max(max_body_bytes, settings.max_buffered_body_bytes),
    )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes, service=service)
    app.add_middleware(RequestTelemetryMiddleware, service=service)


def _add_probe_routes(app: FastAPI, service: str, settings: ServiceSettings, ready: ReadyCheck) -> None:
    """``/health`` (liveness) and ``/ready`` (readiness, asked of ``ready``)."""

    @app.get("/health", tags=["probes"], summary="Liveness: the process is up")
    async def health() -> dict[str, Any]:
        # No instance id (the hostname by default), no Python version: nothing about the host for a
        # stranger. Which replica answered is in the logs, spans and metrics, which carry it.
        return {"status": "ok", "service": service, "version": __version__}

    @app.get(
        "/ready",
        tags=["probes"],
        summary="Readiness: able to serve (model loaded and warmed up / downstream ready)",
        responses={503: {"description": "Not ready; the error message says why"}},
    )
    async def readiness() -> JSONResponse:
        ok, reason = await ready(app)
        if not ok:
            raise NotReady(reason)
        return JSONResponse({"status": "ready", "service": service, "detail": reason})


# Media types whose body is a form (Starlette parses them): the image is then the field ``file``.
FORM_MEDIA_TYPES = frozenset({"multipart/form-data", "application/x-www-form-urlencoded"})


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def missing_file(message: str = "Field required", problem: str = "missing") -> RequestValidationError:
    """What FastAPI answers for a required ``File()`` parameter that is not there (a 422)."""
    return RequestValidationError([{"type": problem, "loc": ("body", "file"), "msg": message}])


async def read_form_file(request: Request, settings: UploadSettings) -> bytes:
    """The bytes of the form field ``file``, read as FastAPI reads a ``File()`` parameter: a body
    that is not a form, or a form without that file, is a 422; a form that cannot be parsed a 400."""
    if media_type(request) not in FORM_MEDIA_TYPES:
        raise missing_file()
    try:
        form = await request.form()
    except StarletteHTTPException:  # malformed multipart (Starlette's 400), or our body limits
        raise
    except Exception as exc:  # what FastAPI answers for any other parser failure
        raise BadRequest("there was an error parsing the body (the form)") from exc
    try:
        file = form.get("file")
        if file is None:
            raise missing_file()
        if not isinstance(file, UploadFile):
            raise missing_file("Expected a file, received a text field", "value_error")
        return await read_upload(file, settings)
    finally:
        await form.close()


async def read_upload(file: UploadFile, settings: UploadSettings) -> bytes:
    """The uploaded file's bytes, refusing empty and oversized files with a clear error."""
    data = await file.read()
    if not data:
        raise BadRequest("the uploaded file 'file' is empty", code="empty_file")
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"the uploaded file is {len(data)} bytes; the limit is {settings.max_upload_bytes}")
    return data


async def read_image(request: Request, settings: UploadSettings) -> bytes:
    """The image a request carries: the multipart field ``file``, or, when the body is not a form,
    the body itself. postprocess forwards uploads as bodies: no multipart to write on one side and
    parse on the other (~0.2 ms of CPU per request for a 100 KB photo, docs/profiling.md)."""
    if media_type(request) in FORM_MEDIA_TYPES:
        return await read_form_file(request, settings)
    data = await read_body(request, settings.max_upload_bytes)
    if not data:
        raise BadRequest("the request body (the image) is empty", code="empty_file")
    return data


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, refused with 413 past ``limit`` bytes: at once when Content-Length
    says so, else once read (the app-wide middleware has already bounded what is read)."""
    declared = request.headers.get("content-length", "")
    # ASCII digits only: str.isdigit() also takes "²" (a latin-1 header byte), which int() refuses.
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLarge(f"request body of {len(body)} bytes exceeds the limit of {limit} bytes")
    return body
