"""What a trace waiting for the tail sampler costs in memory: sizing ``num_traces`` (docs/observability.md).

Sends ``--traces`` synthetic traces shaped like the pipeline's (15 spans over three services, the
attributes our spans carry) to a collector's OTLP/HTTP port as fast as it takes them, then reads
its own metrics: Go heap in use and traces held, idle and with every trace waiting for its decision.

    python bench/sampler_memory.py --otlp http://localhost:4318 --metrics http://localhost:8888/metrics

Run it against one sampler (``otel/sampler.yml`` + ``sampling-tail.yml``, nothing else sending) whose
``decision_wait`` outlasts the sending. Prints the numbers and writes them to ``--report``.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

# The spans of one request, per service: (name, kind), the first one the server span.
SHAPE = {
    "postprocess": ["POST /finalize", "read_upload", "forward", "POST", "postprocess"],
    "preprocess": ["POST /process", "decode", "resize", "normalize", "handoff", "POST"],
    "model": ["POST /predict", "tensor_decode", "inference", "tensor_encode"],
}


def attribute(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def batch(traces: int) -> bytes:
    """``traces`` new traces, as the three services would export them."""
    now = time.time_ns()
    request = ExportTraceServiceRequest()
    spans_of = {service: [] for service in SHAPE}
    for _ in range(traces):
        trace_id = os.urandom(16)
        parent = b""
        for service, names in SHAPE.items():
            for i, name in enumerate(names):
                span_id = os.urandom(8)
                span = Span(
                    trace_id=trace_id,
                    span_id=span_id,
                    parent_span_id=parent,
                    name=name,
                    kind=Span.SPAN_KIND_SERVER if i == 0 else Span.SPAN_KIND_INTERNAL,
                    start_time_unix_nano=now,
                    end_time_unix_nano=now + 20_000_000,
                    attributes=[
                        attribute("http.route", name.split(" ")[-1]),
                        attribute("http.response.status_code", 200),
                        attribute("url.path", "/finalize"),
                        attribute("client.address", "172.18.0.9"),
                        attribute("ml_pipeline.tensor.bytes", 602112),
                    ],
                )
                spans_of[service].append(span)
                if i == 0:
                    parent = span_id
    for service, spans in spans_of.items():
        resource = Resource(attributes=[attribute("service.name", service), attribute("service.instance.id", "bench")])
        request.resource_spans.append(ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)]))
    return request.SerializeToString()


def read_metrics(url: str) -> dict[str, float]:
    text = httpx.get(url, timeout=10).text
    wanted = {
        "heap": r"^otelcol_process_runtime_heap_alloc_bytes(?:_total)?(?:\{[^}]*\})? (\S+)",
        "rss": r"^otelcol_process_memory_rss(?:_bytes)?(?:\{[^}]*\})? (\S+)",
        "held": r"^otelcol_processor_tail_sampling_sampling_traces_on_memory(?:\{[^}]*\})? (\S+)",
    }
    found = {}
    for name, pattern in wanted.items():
        values = [float(v) for v in re.findall(pattern, text, re.M)]
        found[name] = sum(values) if values else 0.0
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--otlp", default="http://localhost:4318")
    parser.add_argument("--metrics", default="http://localhost:8888/metrics")
    parser.add_argument("--traces", type=int, default=5000)
    parser.add_argument("--report", type=Path, default=Path("reports/sampler-memory.md"))
    args = parser.parse_args()

    idle = read_metrics(args.metrics)
    started = time.monotonic()
    with httpx.Client(timeout=30) as client:
        for _ in range(args.traces // 100):
            r = client.post(
                f"{args.otlp}/v1/traces", content=batch(100), headers={"Content-Type": "application/x-protobuf"}
            )
            r.raise_for_status()
    sent_s = time.monotonic() - started
    time.sleep(6)  # the collector's own metrics are read every few seconds
    loaded = read_metrics(args.metrics)
    per_trace = (loaded["heap"] - idle["heap"]) / max(loaded["held"], 1)
    lines = [
        "# What a trace waiting for the tail sampler costs",
        "",
        f"{args.traces} traces of {sum(len(v) for v in SHAPE.values())} spans sent in {sent_s:.1f} s.",
        "",
        "| | idle | all waiting |",
        "|---|---|---|",
        f"| traces held | {idle['held']:.0f} | {loaded['held']:.0f} |",
        f"| Go heap in use | {idle['heap'] / 2**20:.1f} MiB | {loaded['heap'] / 2**20:.1f} MiB |",
        f"| resident memory | {idle['rss'] / 2**20:.1f} MiB | {loaded['rss'] / 2**20:.1f} MiB |",
        "",
        f"Heap per trace held: **{per_trace / 1024:.1f} KiB**.",
    ]
    print("\n".join(lines))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
