"""Helpers to assert on finished spans from an in-memory exporter."""

from __future__ import annotations

from collections import defaultdict

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

STAGES = {
    "postprocess": {"forward", "postprocess"},
    "preprocess": {"decode", "resize", "normalize", "handoff"},
    "model": {"tensor_decode", "inference", "tensor_encode"},
}


def by_trace(spans: list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    traces = defaultdict(list)
    for span in spans:
        traces[format(span.context.trace_id, "032x")].append(span)
    return dict(traces)


def service(span: ReadableSpan) -> str:
    return span.resource.attributes["service.name"]


def assert_complete_chain(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    """One trace: postprocess server span is the root; preprocess's server span is a child of
    postprocess's client span; model's server span a child of preprocess's client span, under the
    hand-off stage; every stage span present, under its service's server span. Returns the
    server span of each service."""
    by_id = {span.context.span_id: span for span in spans}
    servers = {service(s): s for s in spans if s.kind == SpanKind.SERVER}
    assert sorted(servers) == ["model", "postprocess", "preprocess"], [(service(s), s.name) for s in spans]
    assert sum(s.kind == SpanKind.SERVER for s in spans) == 3, "a service handled more than one request in this trace"

    def parent(span):
        return by_id.get(span.parent.span_id) if span.parent else None

    def ancestors(span):
        while (span := parent(span)) is not None:
            yield span

    root = servers["postprocess"]
    assert root.parent is None and "/finalize" in root.name
    for downstream, upstream in (("preprocess", "postprocess"), ("model", "preprocess")):
        client = parent(servers[downstream])
        assert client is not None and client.kind == SpanKind.CLIENT and service(client) == upstream
        assert servers[upstream] in ancestors(client)
    assert parent(parent(servers["model"])).name == "handoff"
    for svc, names in STAGES.items():
        stage_spans = {s.name: s for s in spans if service(s) == svc and s.kind == SpanKind.INTERNAL}
        assert names <= set(stage_spans), (svc, sorted(stage_spans))
        for name in names:
            assert servers[svc] in ancestors(stage_spans[name]), (svc, name)
    return servers
