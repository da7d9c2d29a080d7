"""The HTTP side of telemetry: each request's SERVER span (``instrument_app``, the caller's W3C
context its parent), the public edge's distrust of that context, and ``RequestTelemetryMiddleware``,
which counts and times every request for Prometheus with the trace id as exemplar (a slow latency
bucket leads to its trace), adds ``X-Trace-Id`` and logs one line per request.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from opentelemetry.util.types import AttributeValue

from ml_pipeline import __version__
from ml_pipeline.core.wire import TRACE_ID_HEADER, Attr
from ml_pipeline.observability import metrics
from ml_pipeline.observability.requests import record_request
from ml_pipeline.observability.tracing import current_trace_id, record_http_status

if TYPE_CHECKING:
    from fastapi import FastAPI

# Probes: no spans, no request log lines. (Metrics are not served on this port at all:
# ml_pipeline.observability.metrics.serve_metrics, on METRICS_PORT.)
QUIET_PATHS = ("/health", "/ready", "/v2/health/live", "/v2/health/ready")
# The ``method`` label of a request whose method no route answers (PROPFIND, FOO, …): any client
# picks the method, and each new value would be a new series.
OTHER_METHOD = "other"
# The status recorded for a request that got no response because its client hung up (nginx's 499).
CLIENT_CLOSED = 499
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
        route = matched_route(scope)  # also for one answered before routing: a 408, 413 or 503
        if route:
            span.update_name(f"{name} {route}")
            span.set_attribute(Attr.HTTP_ROUTE, route)
        if status:  # 4xx are the client's: not the server span's error (semantic conventions)
            record_http_status(span, status, error=status >= 500)
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


def matched_route(scope) -> str | None:
    """The route template (``/finalize``) a request is for, None for an unknown path. A request
    answered before routing (a 408 or 413 from its body, an overload refusal) is matched against
    the app's routes here: its span and metrics are its route's, as the routed requests' are."""
    route = scope.get("route")
    if route is None:
        from starlette.routing import Match

        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            if candidate.matches(scope)[0] is Match.FULL:
                route = candidate
                break
    return getattr(route, "path", None)


def route_template(scope) -> str:
    """The route template for the request metrics, never the raw path: unknown paths must not mint
    new series (they are all ``unmatched``)."""
    return matched_route(scope) or "unmatched"


def answered_methods(app) -> frozenset[str]:
    """The HTTP methods some route of ``app`` answers (GET, HEAD, POST, …)."""
    routes = getattr(getattr(app, "router", None), "routes", ())
    return frozenset(method for route in routes for method in (getattr(route, "methods", None) or ()))


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
