"""The model's statistics (Triton's statistics extension) on their own: Triton's JSON format, which
Triton's own gRPC message reads; successes, failures and executions counted apart; per model and
version; exact under many threads at once (worker threads count executions)."""

import threading

import pytest
from google.protobuf import json_format
from tritonclient.grpc import service_pb2

from model.statistics import DURATIONS, ModelStatistics, RequestTimings


def timings(ns=1000):
    return RequestTimings(
        total_ns=10 * ns, queue_ns=ns, compute_input_ns=2 * ns, compute_infer_ns=3 * ns, compute_output_ns=4 * ns
    )


def stat_of(report, name="m", version="1"):
    [stat] = [s for s in report["model_stats"] if (s["name"], s["version"]) == (name, version)]
    return stat


def test_a_model_added_reports_zeros_in_tritons_format():
    stats = ModelStatistics()
    stats.add("m", "1")
    report = stats.report()
    assert report == {
        "model_stats": [
            {
                "name": "m",
                "version": "1",
                "last_inference": 0,
                "inference_count": 0,
                "execution_count": 0,
                "inference_stats": {d: {"count": 0, "ns": 0} for d in DURATIONS},
                "response_stats": {},
                "batch_stats": [],
                "memory_usage": [],
            }
        ]
    }
    json_format.ParseDict(report, service_pb2.ModelStatisticsResponse())  # Triton's own message reads it


def test_successes_failures_and_executions_are_counted_apart():
    stats = ModelStatistics(clock_ms=lambda: 1_700_000_000_123)
    stats.add("m", "1")
    stats.success("m", "1", inferences=4, timings=timings())
    stats.success("m", "1", inferences=1, timings=timings(2000))
    stats.failure("m", "1", total_ns=500)
    stats.executed("m", "1")
    stat = stat_of(stats.report())
    inference = stat["inference_stats"]
    assert (stat["inference_count"], stat["execution_count"], stat["last_inference"]) == (5, 1, 1_700_000_000_123)
    assert inference["success"] == {"count": 2, "ns": 30_000}
    assert inference["fail"] == {"count": 1, "ns": 500}
    assert inference["queue"] == {"count": 2, "ns": 3000}
    assert inference["compute_input"] == {"count": 2, "ns": 6000}
    assert inference["compute_infer"] == {"count": 2, "ns": 9000}
    assert inference["compute_output"] == {"count": 2, "ns": 12_000}
    assert inference["cache_hit"] == inference["cache_miss"] == {"count": 0, "ns": 0}
    response = json_format.ParseDict(stats.report(), service_pb2.ModelStatisticsResponse())
    assert response.model_stats[0].inference_stats.compute_output.ns == 12_000


def test_reports_are_per_model_and_version_and_filtered_by_them():
    stats = ModelStatistics()
    for name, version in (("a", "1"), ("a", "2"), ("b", "1")):
        stats.add(name, version)
    stats.success("a", "2", inferences=3, timings=timings())
    assert [(s["name"], s["version"]) for s in stats.report()["model_stats"]] == [("a", "1"), ("a", "2"), ("b", "1")]
    assert [(s["name"], s["version"]) for s in stats.report("a")["model_stats"]] == [("a", "1"), ("a", "2")]
    assert [s["inference_count"] for s in stats.report("a", "2")["model_stats"]] == [3]
    assert stats.report("c")["model_stats"] == []


def test_counts_are_exact_when_many_threads_count_at_once():
    stats = ModelStatistics()
    stats.add("m", "1")
    threads, each = 8, 2000
    start = threading.Barrier(threads)

    def count():
        start.wait()
        for i in range(each):
            stats.success("m", "1", inferences=2, timings=timings(1))
            stats.executed("m", "1")
            if i % 10 == 0:
                stats.failure("m", "1", total_ns=7)
            stats.report()  # a reader at the same time

    workers = [threading.Thread(target=count) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stat = stat_of(stats.report())
    n = threads * each
    assert (stat["inference_count"], stat["execution_count"]) == (2 * n, n)
    assert stat["inference_stats"]["success"] == {"count": n, "ns": 10 * n}
    assert stat["inference_stats"]["fail"] == {"count": threads * each // 10, "ns": 7 * threads * each // 10}
    assert stat["inference_stats"]["compute_output"] == {"count": n, "ns": 4 * n}


@pytest.mark.parametrize("field", ["total_ns", "queue_ns", "compute_input_ns", "compute_infer_ns", "compute_output_ns"])
def test_a_negative_duration_counts_as_zero(field):
    """Durations come from two clocks' differences (a stage minus the queue): never below zero."""
    values = dict.fromkeys(RequestTimings.__dataclass_fields__, 5) | {field: -3}
    stats = ModelStatistics()
    stats.success("m", "1", inferences=1, timings=RequestTimings(**values))
    inference = stat_of(stats.report())["inference_stats"]
    assert all(inference[d]["ns"] >= 0 for d in DURATIONS)
