"""``ml_pipeline.observability.otlp``: the request bytes are the SDK encoder's, byte for byte, for
spans of every shape the services make and more; and the exporter sends them to the collector."""

from __future__ import annotations

import http.server
import threading

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from ml_pipeline.observability import otlp
from ml_pipeline.observability.otlp import OtlpSpanExporter, encode_spans


def provider(exporter: InMemorySpanExporter, **resource: str) -> TracerProvider:
    tp = TracerProvider(
        resource=Resource.create({"service.name": "preprocess", "service.instance.id": "c0ffee", **resource})
    )
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp


def made_spans():
    """Spans with every field the encoder writes: kinds, remote and local parents, trace state,
    events, links, statuses, dropped counts and each attribute value type."""
    exporter = InMemorySpanExporter()
    tp = provider(exporter)
    tracer = tp.get_tracer("ml_pipeline.preprocess", "1.2.3")
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "value"), ("b", "2")]),
    )
    server = tracer.start_span(
        "POST /process",
        context=trace.set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "url.path": "/process", "server.port": 5000, "neg": -7},
    )
    server.add_link(remote, {"ml_pipeline.link": "untrusted_caller"})
    with trace.use_span(server, end_on_exit=False):
        with tracer.start_as_current_span("decode", attributes={"ml_pipeline.image.bytes": 123_456}) as stage:
            stage.set_attribute("ml_pipeline.tensor.shape", [1, 3, 224, 224])
            stage.set_attribute("ratio", 0.25)
            stage.set_attribute("flags", [True, False])
            stage.set_attribute("names", ["a", "é", ""])
            stage.set_attribute("scores", [0.5, -1.5])
            stage.set_attribute("ok", False)
            stage.set_attribute("empty", "")
            stage.add_event("ml_pipeline.downstream.attempt_failed", {"error.type": "timeout", "n": 0})
            stage.add_event("bare")
        client = tracer.start_span("POST", kind=SpanKind.CLIENT, attributes={"http.response.status_code": 503})
        client.set_status(Status(StatusCode.ERROR, "HTTPStatusError: 503 — busy"))
        try:
            raise ValueError("boom")
        except ValueError as exc:
            client.record_exception(exc)
        client.end()
        ok = tracer.start_span("ok", kind=SpanKind.PRODUCER)
        ok.set_status(Status(StatusCode.OK))
        ok.end()
    server.end()
    other = provider(exporter, **{"service.name": "model"}).get_tracer(
        "ml_pipeline.model", schema_url="https://opentelemetry.io/schemas/1.21.0"
    )
    other.start_span("inference", kind=SpanKind.CONSUMER).end()
    tracer.start_span("tensor_decode").end()  # the first resource again, after the other
    bounded = TracerProvider(resource=Resource.create({}), span_limits=trace_limits())
    bounded.add_span_processor(SimpleSpanProcessor(exporter))
    crowded = bounded.get_tracer("x").start_span("crowded", attributes={f"k{i}": i for i in range(5)})
    for i in range(4):
        crowded.add_event(f"e{i}")
        crowded.add_link(remote)
    crowded.end()
    return exporter.get_finished_spans()


def trace_limits():
    from opentelemetry.sdk.trace import SpanLimits

    return SpanLimits(max_span_attributes=2, max_events=2, max_links=2)


def test_the_request_is_the_sdk_encoders_byte_for_byte():
    spans = made_spans()
    assert len(spans) >= 7 and any(s.dropped_attributes and s.dropped_events and s.dropped_links for s in spans)
    assert encode_spans(spans) == sdk_encode_spans(spans).SerializeToString()


def test_each_span_alone_and_no_spans():
    for span in made_spans():
        assert encode_spans([span]) == sdk_encode_spans([span]).SerializeToString(), span.name
    assert encode_spans([]) == b""


def test_the_exporter_posts_the_request_to_the_collector():
    received = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(
                (self.path, self.headers["Content-Type"], self.rfile.read(int(self.headers["Content-Length"])))
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spans = made_spans()
        exporter = OtlpSpanExporter(endpoint=f"http://127.0.0.1:{server.server_port}/v1/traces", timeout=5)
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        exporter.shutdown()
        assert exporter.export(spans) == SpanExportResult.FAILURE  # after shutdown, as the SDK's
    finally:
        server.shutdown()
    ((path, content_type, body),) = received
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    assert request == sdk_encode_spans(spans)
    assert sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans) == len(spans)


def spans_with(*attribute_sets):
    exporter = InMemorySpanExporter()
    tracer = provider(exporter).get_tracer("x")
    for attributes in attribute_sets:
        tracer.start_span("s", attributes=attributes).end()
    return exporter.get_finished_spans()


def test_values_python_finds_equal_keep_their_own_types():
    """1 == 1.0 == True and 0.0 == -0.0 in Python: each is still encoded as itself, cached or not."""
    sets = [
        {"v": (1, 0)},
        {"v": (1.0, 0.0)},
        {"v": (True, False)},
        {"v": 1},
        {"v": 1.0},
        {"v": True},
        {"v": 0.0},
        {"v": -0.0},
        {"v": float("nan")},
    ]
    for _ in range(2):  # the second time from the cache
        for attributes in sets:
            (span,) = spans_with(attributes)
            assert encode_spans([span]) == sdk_encode_spans([span]).SerializeToString(), attributes


def test_long_and_client_chosen_values_are_not_kept():
    before = len(otlp._key_values)
    long_path = "/" + "x" * 1000
    spans = spans_with(*({"url.path": f"{long_path}{i}"} for i in range(50)))
    assert encode_spans(spans) == sdk_encode_spans(spans).SerializeToString()
    assert len(otlp._key_values) == before


def test_an_attribute_otlp_cannot_carry_is_left_out_not_the_batch():
    (span,) = spans_with({"kept": "yes", "odd": "x"})
    span._attributes = {"kept": "yes", "odd": object(), "huge": 2**63, "surrogate": "\ud800"}
    (clean,) = spans_with({"kept": "yes"})
    encoded = ExportTraceServiceRequest.FromString(encode_spans([span]))
    (sent,) = encoded.resource_spans[0].scope_spans[0].spans
    assert [kv.key for kv in sent.attributes] == ["kept"]
    assert sent.attributes == sdk_encode_spans([clean]).resource_spans[0].scope_spans[0].spans[0].attributes


def test_a_request_over_the_size_limit_is_dropped_before_sending():
    exporter = OtlpSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", max_request_size=100)
    assert exporter.export(spans_with(*({"k": f"value {i}"} for i in range(20)))) == SpanExportResult.FAILURE
