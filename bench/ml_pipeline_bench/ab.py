"""``ml-pipeline-bench ab-report``: the verdict of an interleaved A/B (``bash bench/ab.sh``).

Each run is one ``ml-pipeline-bench run`` result file, ``<SETTING>-<pair>-<value>.json``, on freshly
recreated service containers; A and B alternate and the order flips every pair (the second run of
a pair measured 6-9 % faster whatever it ran: docs/profiling.md), so the mean over pairs cancels
the order. Reported: each service's CPU ms per request (its own process counter, every replica),
their sum, throughput and p50, per pair and as means, and B against A.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ml_pipeline_bench.load import markdown_table

RUN_FILE = re.compile(r"^(?P<setting>[A-Z0-9_]+)-(?P<pair>\d+)-(?P<value>.+)\.json$")


def load_runs(directory: Path, setting: str) -> dict[str, dict[int, dict[str, Any]]]:
    """``{value: {pair: summary}}`` from the run files of ``setting`` in ``directory``."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(directory.glob(f"{setting}-*.json")):
        match = RUN_FILE.match(path.name)
        if not match or match["setting"] != setting:
            continue
        (summary,) = json.loads(path.read_text())["runs"]  # one concurrency per run
        runs.setdefault(match["value"], {})[int(match["pair"])] = summary
    return runs


def _cpu(summary: dict[str, Any]) -> dict[str, float]:
    per_service = dict(summary["server_cpu_ms_per_request"])
    return {**per_service, "chain": sum(per_service.values())}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def compare(runs: dict[str, dict[int, dict[str, Any]]], a: str, b: str) -> dict[str, Any]:
    """Means over the pairs both values ran in, and B ÷ A for each measure."""
    if a not in runs or b not in runs:
        raise ValueError(f"runs of both values needed, found {sorted(runs)}")
    pairs = sorted(set(runs[a]) & set(runs[b]))
    if not pairs:
        raise ValueError("no pair has a run of both values")
    measures: dict[str, dict[str, float]] = {}
    for value in (a, b):
        chosen = [runs[value][p] for p in pairs]
        cpu = [_cpu(s) for s in chosen]
        measures[value] = {f"{name} CPU ms/request": _mean([c[name] for c in cpu]) for name in cpu[0]}
        measures[value]["throughput req/s"] = _mean([s["throughput_rps"] for s in chosen])
        measures[value]["p50 ms"] = _mean([s["p50_ms"] for s in chosen])
        measures[value]["errors"] = sum(s["errors"] for s in chosen)
    ratios = {m: measures[b][m] / measures[a][m] for m in measures[a] if m != "errors" and measures[a][m]}
    return {"a": a, "b": b, "pairs": pairs, "measures": measures, "ratios": ratios}


def render(setting: str, runs: dict[str, dict[int, dict[str, Any]]], a: str, b: str) -> str:
    result = compare(runs, a, b)
    names = list(result["measures"][a])
    lines = [
        f"# A/B: {setting}={a} against {setting}={b}",
        "",
        f"{len(result['pairs'])} interleaved pairs (the order flips every pair), each run on freshly started "
        "services (containers, or local processes for revisions); CPU is each service process's own counter over the run, divided by the requests "
        "it served.",
        "",
    ]
    rows = (
        [m, f"{result['measures'][a][m]:.2f}", f"{result['measures'][b][m]:.2f}", _ratio(result["ratios"].get(m))]
        for m in names
    )
    lines += markdown_table(["mean over pairs", f"{setting}={a}", f"{setting}={b}", "B ÷ A"], "lrrr", rows)
    lines += ["", "Each run:", ""]
    services = [n.removesuffix(" CPU ms/request") for n in names if n.endswith("CPU ms/request")]
    header = ["pair", "value", *[f"{s} CPU ms" for s in services], "req/s", "p50 ms", "errors"]
    each = []
    for pair in result["pairs"]:
        order = (a, b) if pair % 2 else (b, a)
        for value in order:
            s = runs[value][pair]
            cpu = _cpu(s)
            each.append([pair, value, *[f"{cpu[n]:.2f}" for n in services], f"{s['throughput_rps']:.1f}"])
            each[-1] += [f"{s['p50_ms']:.1f}", s["errors"]]
    lines += markdown_table(header, "rl" + "r" * (len(header) - 2), each)
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
