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
