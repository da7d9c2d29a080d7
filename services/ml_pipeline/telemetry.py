"""The one telemetry setup: tracing (OpenTelemetry), structured logs, per-request stage timings.

* Each service gets its own ``TracerProvider`` (so three apps can share one test process) with
  ``service.name`` and ``service.instance.id`` (the hostname: one value per container/replica).
  Spans are exported in a background thread (``BatchSpanProcessor``) with a short timeout, so a
  missing or slow collector never blocks or fails a request; the queue drops spans when full.
* W3C ``traceparent`` is read by ``instrument_app`` (each request's SERVER span) and injected by the
  httpx instrumentation.
* Every log line is one JSON object with the trace id, span id, service and instance of the span
  that was current when it was logged, so ``grep <trace_id>`` follows a request through all logs.
* ``StageTimer`` wraps each pipeline stage in a span and records its duration for the
  ``Server-Timing`` response header, which the services merge hop by hop, and for the stage
  histogram in ``ml_pipeline.metrics``.
* ``RequestTelemetryMiddleware`` counts and times every request for Prometheus, with the trace id
  as exemplar, so a slow latency bucket leads to its trace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import NoOpTracerProvider, Tracer
from opentelemetry.util.types import AttributeValue

from ml_pipeline import __version__, metrics
from ml_pipeline.wire import TRACE_ID_HEADER, Attr

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI

    from ml_pipeline.settings import ServiceSettings

# Probes: no spans, no request log lines. (Metrics are not served on this port at all:
# ml_pipeline.metrics.serve_metrics, on METRICS_PORT.)
QUIET_PATHS = ("/health", "/ready", "/v2/health/live", "/v2/health/ready")
# The ``method`` label of a request whose method no route answers (PROPFIND, FOO, …): any client
# picks the method, and each new value would be a new series.
OTHER_METHOD = "other"
# The status recorded for a request that got no response because its client hung up (nginx's 499).
CLIENT_CLOSED = 499

log = logging.getLogger("ml_pipeline.request")


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


# --------------------------------------------------------------------------- tracing


def create_tracer_provider(
    service: str, settings: ServiceSettings, exporter: SpanExporter | None = None
) -> trace.TracerProvider:
    """A provider for ``service``; ``exporter`` (tests) replaces the OTLP exporter and exports synchronously."""
    if not settings.tracing_enabled:
        return NoOpTracerProvider()
    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": "ml-pipeline",
            "service.instance.id": settings.service_instance_id,
            "service.version": __version__,
        }
    )
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.otel_exporter_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        otlp = OTLPSpanExporter(
            endpoint=settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces",
            timeout=settings.otel_export_timeout_s,
        )
        provider.add_span_processor(
            BatchSpanProcessor(otlp, export_timeout_millis=settings.otel_export_timeout_s * 1000)
        )
    return provider


# Methods the HTTP semantic conventions name; any other is recorded as ``_OTHER`` (a client picks it).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


class _AsgiHeaders(Getter[list[tuple[bytes, bytes]]]):
    """Reads a W3C header from an ASGI scope's raw header list (names are lower-case bytes)."""

    def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier if k == name]
        return values or None

    def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_ASGI_HEADERS = _AsgiHeaders()


def instrument_app(app: FastAPI, provider: trace.TracerProvider) -> None:
    """A SERVER span around each request (but the probes'), the caller's W3C context its parent.

    What opentelemetry-instrumentation-fastapi did, for the attributes the HTTP semantic conventions
    require (method, route, status, scheme, path, client), without its extra work: it built every
    attribute twice (old and new conventions), matched the route before the app did, and fed three
    OpenTelemetry metrics nobody exported (docs/profiling.md). Wraps the whole middleware stack,
    so the error envelope Starlette's outermost middleware writes for an unexpected error still
    finds the span (its trace id)."""
    if not isinstance(provider, TracerProvider):
        return  # tracing off: no spans to make
    tracer = provider.get_tracer("ml_pipeline.http.server", __version__)
    build_inner = app.build_middleware_stack

    def build_middleware_stack():
        inner = build_inner()

        async def traced(scope, receive, send):
            if scope["type"] != "http" or scope["path"] in QUIET_PATHS:
                await inner(scope, receive, send)
                return
            await _serve_in_span(tracer, inner, scope, receive, send)

        return traced

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]  # wrapping it is the point


async def _serve_in_span(tracer: Tracer, app, scope, receive, send) -> None:
    method = scope["method"]
    known = method if method in KNOWN_METHODS else "_OTHER"
    attributes: dict[str, AttributeValue] = {
        Attr.HTTP_REQUEST_METHOD: known,
        Attr.URL_SCHEME: scope.get("scheme", "http"),
        Attr.URL_PATH: scope["path"],
        Attr.NETWORK_PROTOCOL_VERSION: scope.get("http_version", "1.1"),
    }
    if known != method:
        attributes[Attr.HTTP_REQUEST_METHOD_ORIGINAL] = method
    client = scope.get("client")
    if client:
        attributes[Attr.CLIENT_ADDRESS] = client[0]
    headers = scope["headers"]
    parent = extract(headers, getter=_ASGI_HEADERS) if any(k == b"traceparent" for k, _ in headers) else None
    name = known if known != "_OTHER" else "HTTP"  # `POST`, then `POST /finalize` once the route is known
    span = tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    status = 0

    async def send_recording_status(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await app(scope, receive, send_recording_status)
    except BaseException as exc:
        span.record_exception(exc)
        status = status or 500
        raise
    finally:
        route = getattr(scope.get("route"), "path", None)
        if route:
            span.update_name(f"{name} {route}")
            span.set_attribute(Attr.HTTP_ROUTE, route)
        if status:
            span.set_attribute(Attr.HTTP_RESPONSE_STATUS_CODE, status)
            if status >= 500:  # 4xx are the client's: not the server span's error (semantic conventions)
                span.set_attribute(Attr.ERROR_TYPE, str(status))
                span.set_status(trace.StatusCode.ERROR)
        span.end()
        otel_context.detach(token)


# What a caller's trace context arrives in (W3C Trace Context and Baggage).
TRACE_CONTEXT_HEADERS = (b"traceparent", b"tracestate", b"baggage")
CALLER_CONTEXT_KEY = "ml_pipeline.caller_span_context"


def distrust_incoming_trace_context(app: FastAPI) -> None:
    """Make ``app`` start a new trace for every request, whatever ``traceparent`` it brings: the
    caller's span becomes a link on the server span instead of its parent, so a public client
    can neither choose trace ids nor turn sampling off. Wraps the whole middleware stack, since
    the server span (``instrument_app``) reads the headers first."""
    build_inner = app.build_middleware_stack

    def build_middleware_stack():
        inner = build_inner()

        async def untrusted(scope, receive, send):
            if scope["type"] == "http" and any(k in TRACE_CONTEXT_HEADERS for k, _ in scope["headers"]):
                carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                caller = trace.get_current_span(extract(carrier)).get_span_context()
                headers = [(k, v) for k, v in scope["headers"] if k not in TRACE_CONTEXT_HEADERS]
                scope = {**scope, "headers": headers}
                if caller.is_valid:
                    scope.setdefault("state", {})[CALLER_CONTEXT_KEY] = caller
            await inner(scope, receive, send)

        return untrusted

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]  # wrapping it is the point


def instrument_client(client: httpx.AsyncClient, provider: trace.TracerProvider) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)


def shutdown_tracer_provider(provider: trace.TracerProvider) -> None:
    if isinstance(provider, TracerProvider):
        provider.shutdown()


# --------------------------------------------------------------------------- stage timings


class StageTimer:
    """Times the stages of one request: a span per stage plus ``Server-Timing`` entries.

    Timing names are ``<service>.<stage>`` so the hops' headers merge without collisions.
    ``durations_ns`` keeps this service's own stages by name, in nanoseconds: the same measurement,
    for whatever else reports it (the model's statistics extension).
    """

    def __init__(self, tracer: Tracer, service: str):
        self._tracer = tracer
        self._service = service
        self.timings_ms: dict[str, float] = {}
        self.durations_ns: dict[str, int] = {}

    @contextlib.contextmanager
    def stage(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> Iterator[trace.Span]:
        """A span named ``name`` (keys from ``ml_pipeline.wire.Attr``) and its duration recorded."""
        start = time.perf_counter_ns()
        # The span made current by hand: start_as_current_span's generic context managers cost more
        # than the span itself (docs/perf/flame-before-*.txt). The same on an error: recorded, ERROR.
        span = self._tracer.start_span(name, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            ns = time.perf_counter_ns() - start
            self.durations_ns[name] = ns
            self.timings_ms[f"{self._service}.{name}"] = ns / 1e6
            metrics.STAGE_DURATION.labels(self._service, name).observe(
                ns / 1e9, exemplar=metrics.exemplar(current_trace_id())
            )
            span.end()
            otel_context.detach(token)

    def merge_header(self, value: str | None) -> None:
        """Adopt the timings a downstream service reported in its ``Server-Timing`` header."""
        self.timings_ms.update(parse_server_timing(value))

    def header(self) -> str:
        return ", ".join(f"{name};dur={ms:.3f}" for name, ms in self.timings_ms.items())


def parse_server_timing(value: str | None) -> dict[str, float]:
    timings: dict[str, float] = {}
    for entry in (value or "").split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            key, _, raw = param.partition("=")
            if name and key == "dur":
                with contextlib.suppress(ValueError):
                    timings[name] = float(raw)
    return timings


# --------------------------------------------------------------------------- logging


_STANDARD_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured duplicate of the message
    "otel_span",
}


def _record_with_span(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """A log record factory that remembers the span current where the line was logged, so a
    handler formatting it later or on another thread (a QueueHandler's listener) still finds it."""

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.otel_span = trace.get_current_span()
        return record

    make.with_span = True  # type: ignore[attr-defined]  # installed once, however often logging is set up
    return make


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the current span's trace id, span id, service and instance."""

    def __init__(self, service: str, instance: str):
        super().__init__()
        self._service = service
        self._instance = instance

    def format(self, record: logging.LogRecord) -> str:
        span = getattr(record, "otel_span", None) or trace.get_current_span()
        ctx = span.get_span_context()
        resource = getattr(span, "resource", None)  # SDK spans know which service made them
        attrs = resource.attributes if resource is not None else {}
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": attrs.get("service.name", self._service),
            "instance": attrs.get("service.instance.id", self._instance),
            "trace_id": format(ctx.trace_id, "032x") if ctx.is_valid else None,
            "span_id": format(ctx.span_id, "016x") if ctx.is_valid else None,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # A call's `extra` fields join the line but never replace the ones above.
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_FIELDS and k not in line})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(service: str, settings: ServiceSettings) -> None:
    """Send every logger (uvicorn's included) through one JSON handler on stdout."""
    if not getattr(logging.getLogRecordFactory(), "with_span", False):
        logging.setLogRecordFactory(_record_with_span(logging.getLogRecordFactory()))
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service, settings.service_instance_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # httpx logs every request at INFO; our request lines already cover each hop.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))


# --------------------------------------------------------------------------- request middleware


def route_template(scope) -> str:
    """The route template (``/finalize``), never the raw path: unknown paths must not mint new
    series. A request answered before routing (a 413 from its size, an overload refusal) is
    matched against the app's routes here, so it counts under its route, not as unmatched."""
    route = scope.get("route")
    if route is None:
        from starlette.routing import Match

        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            if candidate.matches(scope)[0] is Match.FULL:
                route = candidate
                break
    return getattr(route, "path", None) or "unmatched"


def answered_methods(app) -> frozenset[str]:
    """The HTTP methods some route of ``app`` answers (GET, HEAD, POST, …)."""
    routes = getattr(getattr(app, "router", None), "routes", ())
    return frozenset(method for route in routes for method in (getattr(route, "methods", None) or ()))


def record_request(
    service: str,
    route: str,
    method: str,
    path: str,
    status: int,
    duration_s: float,
    *,
    method_label: str | None = None,
) -> None:
    """One served request in the request metrics (the trace id as exemplar) and one log line:
    HTTP requests and gRPC calls alike (their method ``GRPC``, their status the HTTP one).
    ``method_label``: the method as the metrics record it, when not ``method`` itself."""
    labels = (service, route, method_label or method, str(status))
    metrics.REQUESTS.labels(*labels).inc()
    metrics.REQUEST_DURATION.labels(*labels).observe(duration_s, exemplar=metrics.exemplar(current_trace_id()))
    log.info("%s %s %d", method, path, status, extra={"status": status, "duration_ms": round(duration_s * 1000, 3)})


_TRACE_ID_KEY = TRACE_ID_HEADER.lower().encode("latin-1")  # ASGI header names are lower-case bytes


class RequestTelemetryMiddleware:
    """Adds ``X-Trace-Id`` to every traced response, logs one line per request and records the
    request metrics (count, duration with the trace id as exemplar, in-flight).

    Runs inside the OpenTelemetry middleware, so the server span is current here. The ``method``
    label is one of the methods the app's routes answer, any other is ``other`` (the log line keeps
    the real one).
    """

    def __init__(self, app, service: str):
        self.app = app
        self.service = service
        self._methods: frozenset[str] | None = None  # the app's answered methods, read at the first request

    def method_label(self, scope) -> str:
        if self._methods is None:
            self._methods = answered_methods(scope.get("app"))
        return scope["method"] if scope["method"] in self._methods else OTHER_METHOD

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        quiet = scope["path"] in QUIET_PATHS
        start = time.perf_counter()
        status = CLIENT_CLOSED  # unless a response starts: the client left before one was due

        async def send_with_trace_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                trace_id = current_trace_id()
                headers = list(message.get("headers", ()))
                if trace_id and all(name.lower() != _TRACE_ID_KEY for name, _ in headers):
                    message["headers"] = [*headers, (_TRACE_ID_KEY, trace_id.encode("latin-1"))]
            await send(message)

        caller = scope.get("state", {}).get(CALLER_CONTEXT_KEY)
        if caller is not None:  # see distrust_incoming_trace_context
            trace.get_current_span().add_link(caller, {Attr.LINK_KIND: "untrusted_caller"})
        in_flight = metrics.IN_FLIGHT.labels(self.service)
        if not quiet:
            in_flight.inc()
        try:
            await self.app(scope, receive, send_with_trace_id)
        except BaseException:
            if status == CLIENT_CLOSED:
                status = 500
            raise
        finally:
            if not quiet:
                in_flight.dec()
                duration_s = time.perf_counter() - start
                record_request(
                    self.service,
                    route_template(scope),
                    scope["method"],
                    scope["path"],
                    status,
                    duration_s,
                    method_label=self.method_label(scope),
                )
