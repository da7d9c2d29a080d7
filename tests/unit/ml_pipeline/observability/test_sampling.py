"""The collector's tail-sampling rules as the services apply them to exemplars: the probabilistic
policy's hash and threshold against values computed by the collector's own Go code (contrib
tailsamplingprocessor v0.140.1, ``calculateThreshold`` and ``hashTraceID`` compiled verbatim), and
the three rules that make a trace certain to be kept."""

import random

import pytest

from ml_pipeline.observability.sampling import MAX_UINT64, TailSampling, fnv1a64, keep_threshold

# From Go: calculateThreshold(percent / 100).
GO_THRESHOLDS = {
    10: 1844674407370955263,
    1: 184467440737095519,
    25: 4611686018427387903,
    50: 9223372036854775807,
    0.1: 18446744073709551,
}
# From Go: hashTraceID("default-hash-seed", id) and whether 10 % keeps it.
GO_HASHES = {
    "ffffffffffffffffffffffffffffffff": (1711019809656077869, True),
    "4bf92f3577b34da6a3ce929d0e0e4736": (11908981664384643253, False),
}


@pytest.mark.parametrize(("percent", "threshold"), GO_THRESHOLDS.items())
def test_thresholds_are_the_collectors(percent, threshold):
    assert keep_threshold(percent) == threshold


def test_every_trace_at_100_percent_and_none_at_0():
    assert keep_threshold(100) == MAX_UINT64
    assert keep_threshold(0) == 0
    rules = TailSampling("tail", keep_percent=100)
    assert all(rules.picks(f"{random.getrandbits(128):032x}") for _ in range(200))
    assert not any(TailSampling("tail", keep_percent=0).picks(f"{i + 1:032x}") for i in range(200))


@pytest.mark.parametrize(("trace_id", "expected"), GO_HASHES.items())
def test_the_hash_and_the_pick_are_the_collectors(trace_id, expected):
    go_hash, kept_at_10 = expected
    assert fnv1a64(bytes.fromhex(trace_id), fnv1a64(b"default-hash-seed")) == go_hash
    assert TailSampling("tail", keep_percent=10).picks(trace_id) is kept_at_10


def test_the_picked_share_is_the_percentage():
    rng = random.Random(7)
    rules = TailSampling("tail", keep_percent=5)
    picked = sum(rules.picks(f"{rng.getrandbits(128):032x}") for _ in range(20_000))
    assert 0.045 < picked / 20_000 < 0.055


def test_errors_slow_spans_and_picked_ids_are_kept_nothing_else():
    rules = TailSampling("tail", keep_percent=10, slow_ms=500)
    dropped = "4bf92f3577b34da6a3ce929d0e0e4736"  # not picked at 10 %
    picked = "ffffffffffffffffffffffffffffffff"
    assert not rules.keeps(dropped, error=False, duration_s=0.4999)
    assert rules.keeps(dropped, error=True, duration_s=0.001)
    assert rules.keeps(dropped, error=False, duration_s=0.5)  # the latency policy: >= whole milliseconds
    assert rules.keeps(picked, error=False, duration_s=0.001)
    # Asked again for the same trace (a request's stages, then the request): the same answer.
    assert rules.picks(picked) and not rules.picks(dropped) and rules.picks(picked)


def test_all_keeps_every_trace():
    assert TailSampling("all", keep_percent=0).keeps("4bf92f3577b34da6a3ce929d0e0e4736", error=False, duration_s=0)


def test_a_stage_fails_for_the_sampler_only_on_our_errors():
    """A stage that raised a 5xx (or any other exception) is ERROR, which the tail sampler keeps; one
    refusing the client's input (4xx) records the exception but stays UNSET, like the server span,
    so junk uploads cannot make the sampler keep every trace they start."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from ml_pipeline.core.errors import BadRequest, PipelineError
    from ml_pipeline.observability.stages import StageTimer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    timer = StageTimer(provider.get_tracer("test"), "preprocess")
    for error in (BadRequest("not an image"), PipelineError("the model broke"), RuntimeError("a bug")):
        with pytest.raises(type(error)), timer.stage("decode"):
            raise error
    statuses = [(span.status.status_code, len(span.events)) for span in exporter.get_finished_spans()]
    assert statuses == [(StatusCode.UNSET, 1), (StatusCode.ERROR, 1), (StatusCode.ERROR, 1)]
