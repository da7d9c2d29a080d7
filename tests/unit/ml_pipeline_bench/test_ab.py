"""The interleaved A/B's verdict (ml_pipeline_bench.ab): means over pairs, B ÷ A, every run shown."""

import json

import pytest

from ml_pipeline_bench import ab
from ml_pipeline_bench.cli import main


def write_run(directory, setting, pair, value, post, pre, model, rps=30.0, p50=60.0, errors=0):
    run = {
        "throughput_rps": rps,
        "p50_ms": p50,
        "errors": errors,
        "server_cpu_ms_per_request": {"postprocess": post, "preprocess": pre, "model": model},
    }
    (directory / f"{setting}-{pair}-{value}.json").write_text(json.dumps({"meta": {}, "runs": [run]}))


def test_means_over_the_pairs_cancel_the_order(tmp_path):
    # pair 1: asyncio first; pair 2: uvloop first — the second run of each pair is 10 % cheaper.
    write_run(tmp_path, "EVENT_LOOP", 1, "asyncio", 8.0, 16.0, 24.0, rps=30)
    write_run(tmp_path, "EVENT_LOOP", 1, "uvloop", 6.3, 14.4, 21.6, rps=33)
    write_run(tmp_path, "EVENT_LOOP", 2, "uvloop", 7.0, 16.0, 24.0, rps=30)
    write_run(tmp_path, "EVENT_LOOP", 2, "asyncio", 7.2, 14.4, 21.6, rps=33)
    write_run(tmp_path, "OTHER", 1, "asyncio", 1.0, 1.0, 1.0)  # another setting's run is not read
    runs = ab.load_runs(tmp_path, "EVENT_LOOP")
    result = ab.compare(runs, "asyncio", "uvloop")
    assert result["pairs"] == [1, 2]
    assert result["measures"]["asyncio"]["postprocess CPU ms/request"] == pytest.approx(7.6)
    assert result["measures"]["uvloop"]["postprocess CPU ms/request"] == pytest.approx(6.65)
    assert result["measures"]["uvloop"]["chain CPU ms/request"] == pytest.approx((42.3 + 47.0) / 2)
    assert result["ratios"]["postprocess CPU ms/request"] == pytest.approx(6.65 / 7.6)
    assert result["ratios"]["preprocess CPU ms/request"] == pytest.approx(1.0)
    assert result["ratios"]["throughput req/s"] == pytest.approx(1.0)


def test_the_report_lists_each_run_in_the_order_it_ran(tmp_path, capsys):
    for pair, order in ((1, ("a", "b")), (2, ("b", "a"))):
        for value in order:
            write_run(tmp_path, "X", pair, value, 1.0, 2.0, 3.0 if value == "a" else 1.5)
    out = tmp_path / "X.md"
    assert main(["ab-report", "X", "a", "b", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| model CPU ms/request | 3.00 | 1.50 | 0.500 |" in text
    assert "| chain CPU ms/request | 6.00 | 4.50 | 0.750 |" in text
    rows = [line for line in text.splitlines() if line.startswith(("| 1 ", "| 2 "))]
    assert [r.split("|")[2].strip() for r in rows] == ["a", "b", "b", "a"]
    assert text in capsys.readouterr().out


def test_a_value_that_never_ran_is_refused(tmp_path, capsys):
    write_run(tmp_path, "X", 1, "a", 1.0, 2.0, 3.0)
    assert main(["ab-report", "X", "a", "b", str(tmp_path)]) == 2
    assert "runs of both values needed" in capsys.readouterr().err
