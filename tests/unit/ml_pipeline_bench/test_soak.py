"""The soak verdict (ml_pipeline_bench.soak): each criterion fails when it should."""

import pytest

from ml_pipeline_bench.soak import MAX_STEAL_RISE, SoakResult, read_cpu_times, steal_share

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
        ({"last_p99": 160}, "p99 of the last comparable window"),
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


def test_stolen_cpu_is_read_from_the_machine_wide_line_of_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n")
    before = read_cpu_times(stat)
    assert before == (1000, 35)
    stat.write_text("cpu  300 0 100 1100 10 0 5 235 0 0\n")
    assert steal_share(before, read_cpu_times(stat)) == pytest.approx(200 / 750)
    assert read_cpu_times(tmp_path / "absent") is None and steal_share(None, before) is None


def windows(result: SoakResult, *rows: tuple[float, float | None]) -> dict:
    """Windows of 60 s as (p99 ms, stolen share) after the warm-up; flat resources."""
    result.windows = [{"end_s": 60.0, "sent": 1, "statuses": {"200": 1}, "p50_ms": 1.0, "p99_ms": 300.0, "steal": 0.0}]
    result.windows += [
        {"end_s": 60.0 * (i + 2), "sent": 1, "statuses": {"200": 1}, "p50_ms": 1.0, "p99_ms": p99, "steal": steal}
        for i, (p99, steal) in enumerate(rows)
    ]
    end = int(result.windows[-1]["end_s"])
    result.samples = [
        {"t_s": t, "processes": {"m@a": {"rss_bytes": 1e8, "open_fds": 20}}} for t in range(0, end + 1, 5)
    ]
    return result.summary()


def test_a_minute_the_host_stole_is_not_judged_and_the_soak_says_so():
    """The CI failure of 2026-12-03: the last minute lost 30 % of the CPU to other guests, the first 8 %."""
    result = SoakResult("t", 70, 35, 180, 60, 60, max_p99_ratio=2.0)
    summary = windows(result, (103.0, 0.08), (376.0, 0.30))
    assert result.latency_windows() is None  # run_soak runs another window while this is None
    assert not summary["passed"] and summary["p99_ratio"] is None
    assert "latency not judged: every later window lost over 10 points more" in summary["failures"][0]
    assert "8 %, 30 %" in summary["failures"][0]


def test_the_extra_comparable_window_is_judged_and_can_still_fail():
    result = SoakResult("t", 70, 35, 180, 60, 60, max_p99_ratio=2.0)
    summary = windows(result, (103.0, 0.08), (376.0, 0.30), (120.0, 0.05))
    assert summary["passed"], summary["failures"]
    assert summary["p99_ratio"] == pytest.approx(120 / 103) and summary["p99_last_window_end_s"] == 240.0
    summary = windows(result, (103.0, 0.08), (376.0, 0.30), (250.0, 0.08 + MAX_STEAL_RISE))  # alike, twice as slow
    assert any("p99 of the last comparable window 250 ms" in f for f in summary["failures"]), summary["failures"]


def test_minutes_that_all_lose_much_to_the_host_compare_with_each_other():
    """A noisy hour: every minute loses a quarter of the CPU; a doubling still fails."""
    result = SoakResult("t", 70, 35, 180, 60, 60, max_p99_ratio=2.0)
    assert windows(result, (330.0, 0.23), (480.0, 0.27))["passed"]
    assert not windows(result, (330.0, 0.23), (700.0, 0.27))["passed"]


def test_windows_without_a_steal_reading_are_judged():
    """Off Linux there is no /proc/stat: the soak judges every window, as it did before."""
    result = SoakResult("t", 70, 35, 180, 60, 60)
    summary = windows(result, (100.0, None), (160.0, None))
    assert summary["p99_ratio"] == pytest.approx(1.6) and not summary["passed"]


def with_statuses(result: SoakResult, *rows: tuple[float, dict[str, int]]) -> dict:
    """Like ``windows``, p99 flat at 100 ms, each later window with (stolen share, statuses)."""
    windows(result, *[(100.0, steal) for steal, _ in rows])
    for window, (_, statuses) in zip(result.windows[1:], rows, strict=True):
        window["statuses"] = statuses
    return result.summary()


def test_load_shed_while_the_host_steals_the_cpu_is_excused_and_counted():
    """The CI failure of 2026-12-03 (second): three minutes lost 34-44 % to other guests, and
    admission control shed 219 of 6,622 requests with 503 in them."""
    result = SoakResult("t", 70, 35, 180, 60, 60, max_p99_ratio=2.0)
    summary = with_statuses(result, (0.08, {"200": 1100}), (0.39, {"200": 1013, "503": 91}), (0.10, {"200": 1100}))
    assert summary["passed"], summary["failures"]
    assert summary["shed_while_stolen"] == 91 and summary["statuses"]["503"] == 91


@pytest.mark.parametrize(
    "rows",
    [
        ((0.08, {"200": 1100}), (0.12, {"200": 1090, "503": 10})),  # shed while the host behaved
        ((0.08, {"200": 1100}), (0.39, {"200": 1090, "500": 10}), (0.10, {"200": 1100})),  # never excused
        ((0.08, {"200": 1100}), (0.39, {"200": 1090, "504": 10}), (0.10, {"200": 1100})),
    ],
)
def test_shedding_on_a_fair_host_or_any_other_status_still_fails(rows):
    result = SoakResult("t", 70, 35, 180, 60, 60, max_p99_ratio=2.0)
    summary = with_statuses(result, *rows)
    assert any("not excused by stolen CPU" in f for f in summary["failures"]), summary["failures"]
