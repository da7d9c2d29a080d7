"""One trace drawn from Jaeger's data (ml_pipeline_bench.trace): spans under their parents, in order."""

from ml_pipeline_bench import trace


def jaeger_trace():
    def span(span_id, name, process, start, duration, parent=None):
        references = [{"refType": "CHILD_OF", "traceID": "t", "spanID": parent}] if parent else []
        return {
            "spanID": span_id,
            "operationName": name,
            "processID": process,
            "startTime": start,
            "duration": duration,
            "references": references,
        }

    return {
        "traceID": "abc",
        "processes": {"p1": {"serviceName": "postprocess"}, "p2": {"serviceName": "preprocess"}},
        "spans": [
            span("b", "POST /process", "p2", 1_000_300, 8_000, parent="a"),
            span("c", "decode", "p2", 1_000_500, 2_000, parent="b"),
            span("a", "POST /finalize", "p1", 1_000_000, 10_000),
            span("d", "postprocess", "p1", 1_009_000, 500, parent="a"),
        ],
    }


def test_spans_come_depth_first_with_their_service_and_times():
    rows = trace.timeline(jaeger_trace())
    assert [(r["name"], r["depth"], r["service"]) for r in rows] == [
        ("POST /finalize", 0, "postprocess"),
        ("POST /process", 1, "preprocess"),
        ("decode", 2, "preprocess"),
        ("postprocess", 1, "postprocess"),
    ]
    assert rows[1]["start_ms"] == 0.3 and rows[1]["duration_ms"] == 8.0


def test_the_drawing_is_a_png(tmp_path):
    out = tmp_path / "trace.png"
    assert trace.render(jaeger_trace(), out) == 4
    assert out.read_bytes()[:4] == b"\x89PNG"
