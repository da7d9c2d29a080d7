"""``ml_pipeline.observability.spans``: the lean spans are the SDK's, field for field and byte for
byte once exported, in every case the services meet and the ones they hand back to the SDK."""

from __future__ import annotations

import logging

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from ml_pipeline.observability.otlp import encode_spans
from ml_pipeline.observability.spans import LeanSpan, LeanTracerProvider

REMOTE = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "value")]),
)
UNSAMPLED = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))


class CountingIds(IdGenerator):
    """Ids from a counter: both providers give the same spans the same ids."""

    def __init__(self):
        self.n = 0

    def generate_span_id(self) -> int:
        self.n += 1
        return self.n

    def generate_trace_id(self) -> int:
        self.n += 1
        return 0xABC0_0000 + self.n


def make(provider_class, **options):
    exporter = InMemorySpanExporter()
    provider = provider_class(
        resource=Resource.create({"service.name": "model"}), id_generator=CountingIds(), **options
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("ml_pipeline.model", "1.0"), exporter


def every_kind_of_span(tracer) -> None:
    """What the services do to spans, and what they could: every mutator, before and after the end."""
    server = tracer.start_span(
        "POST",
        context=trace.set_span_in_context(NonRecordingSpan(REMOTE)),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "url.path": "/predict", "server.port": 5000, "ratio": 0.5},
        start_time=1_000,
    )
    server.set_attribute("http.route", "/predict")
    server.set_attribute("http.request.method", "PUT")  # replaced: moves to the end, as the SDK does
    server.set_attributes({"shape": [1, 3, 224, 224], "ok": True, "names": ("a", "b")})
    server.update_name("POST /predict")
    server.add_link(REMOTE, {"ml_pipeline.link": "untrusted_caller"})
    with trace.use_span(server, end_on_exit=False):
        stage = tracer.start_span("inference", attributes={"batch": 1}, start_time=2_000)
        stage.add_event("retry", {"n": 1}, timestamp=2_500)
        try:
            raise ValueError("boom")
        except ValueError as exc:
            stage.record_exception(exc, timestamp=2_600)
        stage.set_status(Status(StatusCode.ERROR, "ValueError: boom"))
        stage.end(3_000)
        stage.set_attribute("late", 1)  # ignored: the span has ended
        linked = tracer.start_span("linked", links=[Link(REMOTE, {"why": "batch"})], start_time=3_500)
        linked.end(3_600)
        odd = tracer.start_span("odd", kind=SpanKind.CLIENT, attributes={"none": None, "": "no key"}, start_time=4_000)
        odd.set_attribute("object", object())  # not a value OTLP has: stored as its str, as the SDK does
        odd.set_attribute(7, "not a str key")  # type: ignore[arg-type]  # dropped, counted
        odd.set_status(StatusCode.OK)
        odd.end(4_100)
    server.end(5_000)
    tracer.start_span("root", start_time=6_000).end(6_100)
    # An unsampled caller: the default sampler follows it (nothing recorded), as the SDK's path does.
    tracer.start_span("unsampled", context=trace.set_span_in_context(NonRecordingSpan(UNSAMPLED))).end()


def spans_of(provider_class, **options) -> tuple[ReadableSpan, ...]:
    tracer, exporter = make(provider_class, **options)
    every_kind_of_span(tracer)
    return exporter.get_finished_spans()


def comparable(span: ReadableSpan) -> str:
    return span.to_json()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"span_limits": SpanLimits(max_span_attributes=3, max_span_attribute_length=4, max_events=1, max_links=0)},
        {"sampler": sampling.ParentBased(sampling.TraceIdRatioBased(1.0))},  # not the default: the SDK's path
    ],
    ids=["defaults", "limits", "another-sampler"],
)
def test_the_spans_are_the_sdks(options):
    sdk, lean = spans_of(TracerProvider, **options), spans_of(LeanTracerProvider, **options)
    assert [s.name for s in sdk] == ["inference", "linked", "odd", "POST /predict", "root"]
    assert [comparable(s) for s in lean] == [comparable(s) for s in sdk]
    assert [s.dropped_attributes for s in lean] == [s.dropped_attributes for s in sdk]
    assert encode_spans(lean) == encode_spans(sdk) == sdk_encode_spans(sdk).SerializeToString()


def test_the_default_sampler_takes_the_lean_path_and_the_rest_the_sdks():
    lean = {s.name: s for s in spans_of(LeanTracerProvider)}
    assert {name for name, s in lean.items() if type(s) is LeanSpan} == {"inference", "odd", "POST /predict", "root"}
    assert type(lean["linked"]) is not LeanSpan and isinstance(lean["linked"], ReadableSpan)  # links at start
    other = spans_of(LeanTracerProvider, sampler=sampling.ALWAYS_ON)
    assert "unsampled" in {s.name for s in other}  # that sampler's decision, not the default's
    assert not any(isinstance(s, LeanSpan) for s in other)


def test_a_child_of_an_unsampled_caller_is_not_recorded_and_keeps_its_trace():
    tracer, exporter = make(LeanTracerProvider)
    span = tracer.start_span("s", context=trace.set_span_in_context(NonRecordingSpan(UNSAMPLED)))
    assert not span.is_recording() and not span.get_span_context().trace_flags.sampled
    assert span.get_span_context().trace_id == UNSAMPLED.trace_id
    span.end()
    assert exporter.get_finished_spans() == ()


def test_a_lean_span_has_every_field_of_the_sdks():
    """Span's methods (events, status, exceptions) read these fields: a new one in an SDK upgrade
    must be set here too."""
    sdk_tracer, _ = make(TracerProvider)
    lean_tracer, _ = make(LeanTracerProvider)
    sdk_span, lean_span = sdk_tracer.start_span("s"), lean_tracer.start_span("s")
    assert type(lean_span) is LeanSpan and isinstance(lean_span, Span)
    assert set(vars(lean_span)) == set(vars(sdk_span))


def test_ids_flags_and_parents():
    tracer, exporter = make(LeanTracerProvider)
    root = tracer.start_span("root")
    child = tracer.start_span("child", context=trace.set_span_in_context(root))
    remote_child = tracer.start_span("remote", context=trace.set_span_in_context(NonRecordingSpan(REMOTE)))
    for span in (child, remote_child, root):
        span.end()
    assert root.parent is None and root.context.trace_flags.sampled
    assert child.parent == root.context and child.context.trace_id == root.context.trace_id
    assert remote_child.parent == REMOTE and remote_child.context.trace_id == REMOTE.trace_id
    assert remote_child.context.trace_state == REMOTE.trace_state
    assert len({s.context.span_id for s in (root, child, remote_child)}) == 3
    assert list(exporter.get_finished_spans()) == [child, remote_child, root]  # the spans themselves


def test_an_ended_span_changes_no_more(caplog):
    tracer, exporter = make(LeanTracerProvider)
    span = tracer.start_span("s", attributes={"a": 1})
    span.end()
    with caplog.at_level(logging.WARNING):
        span.set_attribute("b", 2)
        span.update_name("renamed")
        span.add_event("late")
        span.set_status(StatusCode.ERROR)
        span.end()
    (exported,) = exporter.get_finished_spans()
    assert exported.name == "s" and dict(exported.attributes) == {"a": 1}
    assert not exported.events and exported.status.status_code is StatusCode.UNSET
    assert exporter.get_finished_spans() == (exported,)  # ended once
    with pytest.raises(TypeError):
        span._attributes["b"] = 2  # frozen, as the SDK's


def test_a_disabled_sdk_gives_no_op_tracers(monkeypatch):
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    tracer = LeanTracerProvider().get_tracer("x")
    assert isinstance(tracer, trace.NoOpTracer)
    assert not tracer.start_span("s").is_recording()
