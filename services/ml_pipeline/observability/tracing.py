"""Tracing: one ``TracerProvider`` per service (so three apps can share one test process) with
``service.name`` and ``service.instance.id`` (the hostname: one value per container/replica). Spans
are exported in a background thread (``BatchSpanProcessor``) with a short timeout, so a missing or
slow collector never blocks or fails a request; the queue drops spans when full. The httpx
instrumentation injects W3C ``traceparent`` into every downstream call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import NoOpTracerProvider

from ml_pipeline import __version__

if TYPE_CHECKING:
    import httpx

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


def instrument_client(client: httpx.AsyncClient, provider: trace.TracerProvider) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)


def shutdown_tracer_provider(provider: trace.TracerProvider) -> None:
    if isinstance(provider, TracerProvider):
        provider.shutdown()
