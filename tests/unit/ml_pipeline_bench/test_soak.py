"""The soak verdict (ml_pipeline_bench.soak): each criterion fails when it should."""

import pytest

from ml_pipeline_bench.soak import SoakResult

PROCESSES = ("model@a:5000", "model@b:5000", "preprocess@c:5000", "postprocess@d:5000")


def soak(
    rss_growth: float = 0.0,
    fds_growth: float = 0.0,
    last_p99: float = 100.0,
    statuses=None,
    files=0,
    fds=20,
    max_p99_ratio: float = 1.5,
):
    """Three 60 s windows, the first a warm-up; a sample every 5 s growing linearly over the measured part."""
    result = SoakResult(
        "t",
        capacity_rps=70,
        rate_rps=35,
        duration_s=180,
        warmup_s=60,
        window_s=60,
        shared_files_after=files,
        max_p99_ratio=max_p99_ratio,
    )
    for end, p99 in ((60.4, 300.0), (120.8, 100.0), (181.2, last_p99)):  # each window ends a little late
        result.windows.append(
            {"end_s": end, "sent": 2100, "statuses": statuses or {"200": 2100}, "p50_ms": 30.0, "p99_ms": p99}
        )
    for t in range(0, 181, 5):
        grown = max(0.0, (t - 60) / 120)  # 0 at the end of the warm-up, 1 at the end
        result.samples.append(
            {
                "t_s": t,
                "processes": {
                    name: {
                        "rss_bytes": 100e6 * (1 + rss_growth * 1.5 * grown),
                        "open_fds": fds * (1 + fds_growth * 1.5 * grown),
                    }
                    for name in PROCESSES
                },
            }
        )
    return result.summary()


def test_flat_resources_and_steady_latency_pass():
    summary = soak(rss_growth=0.02, fds_growth=0.0, last_p99=140)
    assert summary["passed"], summary["failures"]
    assert summary["p99_ratio"] == pytest.approx(1.4)  # the warm-up window's 300 ms does not count
    assert set(summary["growth"]) == set(PROCESSES)


@pytest.mark.parametrize(
    "kwargs, failure",
    [
        ({"rss_growth": 0.15}, "rss_bytes grew"),
        ({"fds_growth": 0.2}, "open_fds grew"),  # 20 → 24: beyond the noise floor of 2
        ({"last_p99": 160}, "p99 of the last window"),
        ({"statuses": {"200": 2000, "503": 100}}, "answers other than 200"),
        ({"files": 3}, "3 files left on the shared volume"),
    ],
)
def test_each_criterion_fails_the_soak(kwargs, failure):
    summary = soak(**kwargs)
    assert not summary["passed"]
    assert any(failure in f for f in summary["failures"]), summary["failures"]


def test_the_ci_soaks_looser_latency_bound_still_fails_a_doubling():
    assert soak(last_p99=153)["failures"] and soak(last_p99=153, max_p99_ratio=2.0)["passed"]
    assert not soak(last_p99=210, max_p99_ratio=2.0)["passed"]


def test_a_process_missing_from_the_last_window_fails_the_soak():
    result = SoakResult("t", 70, 35, 180, 60, 60)
    result.windows = [
        {"end_s": e, "sent": 1, "statuses": {"200": 1}, "p50_ms": 1.0, "p99_ms": 1.0} for e in (60, 120, 180)
    ]
    result.samples = [
        {"t_s": t, "processes": {"model@a:5000": {"rss_bytes": 1e8, "open_fds": 20}} if t < 130 else {}}
        for t in range(0, 181, 5)
    ]
    summary = result.summary()
    assert not summary["passed"] and "restarted or not scraped" in " ".join(summary["failures"])


def test_descriptors_may_move_within_the_noise_floor():
    summary = soak(fds_growth=0.2, fds=10)  # fewest 10 → 11.5 descriptors
    assert summary["passed"], summary["failures"]
    assert summary["growth"]["postprocess@d:5000"]["open_fds"]["growth"] > 0.1


def test_descriptors_are_judged_on_each_window_s_fewest_not_its_bursts():
    """The load generator's bursts open connections for a few seconds; a leak raises the floor."""
    result = SoakResult("t", 70, 35, 180, 60, 60)
    result.windows = [
        {"end_s": e, "sent": 1, "statuses": {"200": 1}, "p50_ms": 1.0, "p99_ms": 1.0} for e in (60, 120, 180)
    ]
    bursty = [
        {"t_s": t, "processes": {"post@a": {"rss_bytes": 1e8, "open_fds": 14 + (6 if t in (150, 170) else 0)}}}
        for t in range(0, 181, 5)
    ]
    result.samples = bursty
    assert result.summary()["passed"]  # the mean would have grown 1 descriptor per burst sample
    leaking = [
        {"t_s": t, "processes": {"post@a": {"rss_bytes": 1e8, "open_fds": 14 + t // 20}}} for t in range(0, 181, 5)
    ]
    result.samples = leaking
    failures = result.summary()["failures"]
    assert failures and "open_fds grew" in failures[0]  # fewest 17 → 20: a descriptor every 20 s


def test_the_p99_baseline_is_the_median_of_the_first_third_of_measured_windows():
    result = SoakResult("t", 70, 35, 420, 60, 60)
    p99s = [300.0, 60.0, 90.0, 200.0, 70.0, 65.0, 105.0]  # warm-up, then six measured minutes
    result.windows = [
        {"end_s": 60.0 * (i + 1), "sent": 1, "statuses": {"200": 1}, "p50_ms": 1.0, "p99_ms": p}
        for i, p in enumerate(p99s)
    ]
    result.samples = [{"t_s": t, "processes": {"m@a": {"rss_bytes": 1e8, "open_fds": 20}}} for t in range(0, 421, 5)]
    summary = result.summary()
    assert summary["p99_first_ms"] == 75.0 and summary["p99_first_windows"] == 2  # median of 90 and 60
    assert summary["passed"] and summary["p99_ratio"] == 1.4  # against the first minute alone: 1.75x, a failure
