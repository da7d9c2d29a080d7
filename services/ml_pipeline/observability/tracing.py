"""Tracing: one ``TracerProvider`` per service (so three apps can share one test process) with
``service.name`` and ``service.instance.id`` (the hostname: one value per container/replica). Spans
are exported in a background thread (``BatchSpanProcessor``) with a short timeout, so a missing or
slow collector never blocks or fails a request; the queue drops spans when full. Each call to the
next hop gets a CLIENT span (``start_client_span``) whose W3C ``traceparent`` goes with the call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import NoOpTracerProvider

from ml_pipeline import __version__
from ml_pipeline.core.wire import Attr
from ml_pipeline.observability.spans import LeanTracerProvider

if TYPE_CHECKING:
    from ml_pipeline.settings import ServiceSettings


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


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
    provider = LeanTracerProvider(resource=resource)  # the SDK's, its spans made for less (spans.py)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.otel_exporter_otlp_endpoint:
        from ml_pipeline.observability.otlp import OtlpSpanExporter

        otlp = OtlpSpanExporter(
            endpoint=settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces",
            timeout=settings.otel_export_timeout_s,
        )
        provider.add_span_processor(
            BatchSpanProcessor(otlp, export_timeout_millis=settings.otel_export_timeout_s * 1000)
        )
    return provider


def start_client_span(
    tracer: trace.Tracer, method: str, url: str, server: tuple[str, int], headers: dict[str, str], resend_count: int
) -> trace.Span:
    """A CLIENT span for one HTTP call (the current span its parent), its W3C context put in
    ``headers``: the semantic conventions' required attributes, without the httpx instrumentation's
    extra work (it built every attribute for two convention versions, and wrapped each request in
    generic context managers: ~0.4 ms per call, docs/profiling.md). ``resend_count``: the attempts
    before this one (retries on other replicas)."""
    attributes: dict[str, str | int] = {
        Attr.HTTP_REQUEST_METHOD: method,
        Attr.URL_FULL: url,
        Attr.SERVER_ADDRESS: server[0],
        Attr.SERVER_PORT: server[1],
    }
    if resend_count:
        attributes[Attr.HTTP_REQUEST_RESEND_COUNT] = resend_count
    span = tracer.start_span(method, kind=trace.SpanKind.CLIENT, attributes=attributes)
    inject(headers, context=trace.set_span_in_context(span))
    return span


def record_http_status(span: trace.Span, status: int, *, error: bool) -> None:
    """The status an HTTP span answered or got; ``error``: the span failed with it (``error.type``
    the status, as the semantic conventions have it)."""
    span.set_attribute(Attr.HTTP_RESPONSE_STATUS_CODE, status)
    if error:
        span.set_attribute(Attr.ERROR_TYPE, str(status))
        span.set_status(trace.StatusCode.ERROR)


def end_client_span(
    span: trace.Span, *, status: int | None = None, error: BaseException | None = None, client_input: bool
) -> None:
    """End a call's span: the status answered, or the error that kept an answer from coming.

    ERROR for a failed call and for a 5xx. A 4xx is ERROR only when we built what was sent: on a hop
    that carries the client's own input (``client_input``: postprocess forwarding an upload) it is
    the client's bad input, left UNSET like the server spans', so junk uploads cannot make the tail
    sampler keep their traces. A cancelled call (its caller left) is not an error either."""
    if status is not None:
        record_http_status(span, status, error=status >= 500 or (status >= 400 and not client_input))
    elif isinstance(error, Exception):  # not a cancellation (a BaseException): no error, no error.type
        span.set_attribute(Attr.ERROR_TYPE, type(error).__qualname__)
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


def shutdown_tracer_provider(provider: trace.TracerProvider) -> None:
    if isinstance(provider, TracerProvider):
        provider.shutdown()
