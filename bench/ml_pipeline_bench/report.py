"""``ml-pipeline-bench report DIR --out docs/performance.md``: the study's results as a report.

Reads every ``ml-pipeline-bench run --out`` JSON in DIR (one per scenario), writes a Markdown report
with the tables, the targets (met or missed, by how much) and PNG plots beside it: latency and
throughput against concurrency per scenario, and the per-stage breakdown per hand-off transport.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Scenario names bench/study.sh gives; the report reads what is there and says what is missing.
INPROCESS, MONOLITH, CHAIN = "inprocess", "monolith", "chain-http"
ONE_REPLICA, CACHE_ON = "chain-http-1-replica", "chain-http-cache"
WRK_SUFFIX = "-wrk"  # the same scenario driven by wrk: "chain-http-wrk"
TELEMETRY_RUN = re.compile(r"^telemetry-(on|off)-(\d+)$")  # the interleaved on/off repeats
TRANSPORTS = {"chain-json": "json", "chain-http": "http (binary)", "chain-volume": "volume", "chain-volume-ram": "volume (RAM)"}
# Open-loop overload runs (`ml-pipeline-bench run --overload`): admission control on (the defaults) and off.
OVERLOAD, OVERLOAD_OFF = "overload", "overload-no-admission"


@dataclass
class Target:
    name: str
    wanted: str
    measured: str
    met: bool | None  # None: a scenario it needs was not run


def load_runs(directory: Path) -> dict[str, dict[str, Any]]:
    """{scenario: {"meta": …, "runs": [summary per concurrency, ascending]}}."""
    scenarios = {}
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        if "runs" not in data:
            continue
        name = data["meta"].get("label") or path.stem
        data["runs"].sort(key=lambda r: r["concurrency"])
        scenarios[name] = data
    # a wrk run right after the scenario it repeats
    return dict(sorted(scenarios.items(), key=lambda kv: (kv[0].removesuffix(WRK_SUFFIX), kv[0].endswith(WRK_SUFFIX))))


def load_overload(directory: Path) -> dict[str, dict[str, Any]]:
    """{scenario: {"meta": … (with capacity_rps), "overload": [summary per load multiple, ascending]}}."""
    found = {}
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        if "overload" in data:
            data["overload"].sort(key=lambda r: r["load_x"])
            found[data["meta"].get("label") or path.stem] = data
    return found


def at_load(scenario: dict[str, Any], multiple: float) -> dict[str, Any] | None:
    """The run nearest to ``multiple`` × capacity (within 0.25)."""
    runs = [r for r in scenario["overload"] if abs(r["load_x"] - multiple) <= 0.25]
    return min(runs, key=lambda r: abs(r["load_x"] - multiple)) if runs else None


def overload_targets(o: dict[str, dict[str, Any]]) -> list[Target]:
    run = at_load(o[OVERLOAD], 2.0) if OVERLOAD in o else None
    if run is None:
        return [Target("goodput at 2× capacity (200 within 2 s, open loop)", "≥ 0.80× capacity", "not run", None),
                Target("p99 of admitted requests at 2× capacity", "≤ 1000 ms", "not run", None)]
    off = at_load(o[OVERLOAD_OFF], 2.0) if OVERLOAD_OFF in o else None
    measured = f"{run['goodput_x']:.2f}× ({run['goodput_rps']:.1f} of {run['capacity_rps']:.1f} req/s)"
    if off:
        measured += f"; without admission control {off['goodput_x']:.2f}×"
    return [
        Target("goodput at 2× capacity (200 within 2 s, open loop)", "≥ 0.80× capacity", measured, run["goodput_x"] >= 0.8),
        Target("p99 of admitted requests at 2× capacity", "≤ 1000 ms", f"{run['admitted_p99_ms']:.0f} ms", run["admitted_p99_ms"] <= 1000),
    ]


def saturation_rps(scenario: dict[str, Any]) -> float:
    """Throughput at saturation: the best closed-loop throughput over the concurrencies run."""
    return max(r["throughput_rps"] for r in scenario["runs"])


def at_concurrency(scenario: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    return next((r for r in scenario["runs"] if r["concurrency"] == concurrency), None)


def handoff_ms(run: dict[str, Any]) -> float | None:
    """The hand-off's own cost: preprocess's hand-off stage (encode, send, wait for the model's
    answer) minus the model's inference inside it."""
    stages = run["stages_mean_ms"]
    if "preprocess.handoff" not in stages or "model.inference" not in stages:
        return None
    return stages["preprocess.handoff"] - stages["model.inference"]


def split(s: dict[str, dict[str, Any]]) -> tuple[dict, dict]:
    """(the scenarios the tables and plots show, the interleaved telemetry repeats)."""
    main = {k: v for k, v in s.items() if not TELEMETRY_RUN.match(k)}
    return main, {k: v for k, v in s.items() if TELEMETRY_RUN.match(k)}


def telemetry_pairs(s: dict[str, dict[str, Any]], concurrency: int) -> list[tuple[int, dict, dict]]:
    """(repeat, on run, off run) at ``concurrency`` for every repeat that has both."""
    pairs = []
    for i in sorted({int(m.group(2)) for k in s if (m := TELEMETRY_RUN.match(k))}):
        on, off = s.get(f"telemetry-on-{i}"), s.get(f"telemetry-off-{i}")
        run_on, run_off = (at_concurrency(on, concurrency) if on else None), (at_concurrency(off, concurrency) if off else None)
        if run_on and run_off:
            pairs.append((i, run_on, run_off))
    return pairs


def saturation_concurrency(s: dict[str, dict[str, Any]]) -> int:
    return max((r["concurrency"] for k, v in s.items() if TELEMETRY_RUN.match(k) for r in v["runs"]), default=0)


def targets(s: dict[str, dict[str, Any]]) -> list[Target]:
    out: list[Target] = []

    def ratio_target(name, wanted_ratio, num, den):
        if num not in s or den not in s:
            return Target(name, f"≥ {wanted_ratio:.2f}×", "not run", None)
        ratio = saturation_rps(s[num]) / saturation_rps(s[den])
        return Target(
            name, f"≥ {wanted_ratio:.2f}×",
            f"{ratio:.2f}× ({saturation_rps(s[num]):.1f} vs {saturation_rps(s[den]):.1f} req/s)", ratio >= wanted_ratio,
        )

    out.append(ratio_target("chain throughput at saturation (telemetry on) vs in-process", 0.85, CHAIN, INPROCESS))
    if CHAIN in s and INPROCESS in s and at_concurrency(s[CHAIN], 1) and at_concurrency(s[INPROCESS], 1):
        # Judged on wrk's run when there is one: the in-process limit has no client at all, and
        # wrk's own latency is far below this driver's (see the load generator comparison).
        chain_p50, limit_p50 = at_concurrency(s[CHAIN], 1)["p50_ms"], at_concurrency(s[INPROCESS], 1)["p50_ms"]
        wrk_run = at_concurrency(s[CHAIN + WRK_SUFFIX], 1) if CHAIN + WRK_SUFFIX in s else None
        judged = wrk_run["p50_ms"] if wrk_run else chain_p50
        measured = f"{judged:.1f} ms vs {limit_p50:.1f} ms (+{judged - limit_p50:.1f} ms)"
        if wrk_run:
            measured += f", driven by wrk; {chain_p50:.1f} ms with ml-pipeline-bench"
        out.append(Target("p50 at concurrency 1: chain vs in-process", "≤ in-process + 5 ms", measured, judged <= limit_p50 + 5))
    else:
        out.append(Target("p50 at concurrency 1: chain vs in-process", "≤ in-process + 5 ms", "not run", None))
    pairs = telemetry_pairs(s, saturation_concurrency(s))
    if pairs:
        ratios = [on["throughput_rps"] / off["throughput_rps"] for _, on, off in pairs]
        ratio = statistics.median(ratios)
        out.append(Target("telemetry on vs off (throughput at saturation)", "≥ 0.95×",
                          f"{ratio:.2f}× (median of {len(ratios)} interleaved pairs: "
                          + ", ".join(f"{r:.2f}" for r in ratios) + ")", ratio >= 0.95))
    else:
        out.append(Target("telemetry on vs off (throughput at saturation)", "≥ 0.95×", "not run", None))

    def handoff_at_1(name):
        run = at_concurrency(s[name], 1) if name in s else None
        return handoff_ms(run) if run else None

    binary, naive = handoff_at_1("chain-http"), handoff_at_1("chain-json")
    if binary and naive:
        out.append(Target("binary hand-off vs JSON (hand-off time, c=1)", "≥ 20× faster",
                          f"{naive / binary:.1f}× ({binary:.2f} ms vs {naive:.2f} ms)", naive / binary >= 20))
    else:
        out.append(Target("binary hand-off vs JSON (hand-off time, c=1)", "≥ 20× faster", "not run", None))
    volume = handoff_at_1("chain-volume")
    if binary and volume is not None:
        out.append(Target("volume hand-off vs binary (hand-off time, c=1)", "within 1 ms",
                          f"{volume - binary:+.2f} ms ({volume:.2f} vs {binary:.2f} ms)", abs(volume - binary) <= 1))
    else:
        out.append(Target("volume hand-off vs binary (hand-off time, c=1)", "within 1 ms", "not run", None))
    return out


def machine() -> dict[str, str]:
    """What the study ran on (read inside the bench container: the host's kernel and CPUs)."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": str(os.cpu_count())}
    try:
        cpu = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
        info["cpu"] = cpu.split(":", 1)[1].strip()
        mem_kib = int(next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")).split()[1])
        info["memory"] = f"{mem_kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    if os.environ.get("DOCKER_VERSION"):  # set by bench/study.sh, which runs this in the bench container
        info["where"] = f"load generator and services in containers on one compose network (Docker {os.environ['DOCKER_VERSION']})"
        info["python"] += " (in the containers)"
    return info


def plot(s: dict[str, dict[str, Any]], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    s = {k: v for k, v in split(s)[0].items() if not k.endswith(WRK_SUFFIX)}  # one line per scenario

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, scenario in s.items():
        cs = [r["concurrency"] for r in scenario["runs"]]
        axes[0].plot(cs, [r["p50_ms"] for r in scenario["runs"]], marker="o", label=name)
        axes[1].plot(cs, [r["p95_ms"] for r in scenario["runs"]], marker="o", label=name)
    for ax, title in zip(axes, ("p50 latency", "p95 latency")):
        ax.set(title=title, xlabel="concurrency (closed-loop workers)", ylabel="ms", xscale="log", xticks=cs)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "latency.png", dpi=110)
    plt.close(fig)
    files.append("latency.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, scenario in s.items():
        ax.plot([r["concurrency"] for r in scenario["runs"]], [r["throughput_rps"] for r in scenario["runs"]], marker="o", label=name)
    # log y: the cache's hundreds of req/s and JSON's dozen share one readable axis
    ax.set(title="throughput", xlabel="concurrency (closed-loop workers)", ylabel="requests / s (log)", xscale="log", yscale="log")
    ax.set_xticks(sorted({r["concurrency"] for v in s.values() for r in v["runs"]}))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "throughput.png", dpi=110)
    plt.close(fig)
    files.append("throughput.png")

    present = [(name, label) for name, label in TRANSPORTS.items() if name in s and at_concurrency(s[name], 1)]
    if present:
        # .total and postprocess.forward contain the other stages: drawn, they would count them twice
        stage_names = sorted({st for name, _ in present for st in at_concurrency(s[name], 1)["stages_mean_ms"]
                              if not st.endswith(".total") and st != "postprocess.forward"})
        fig, ax = plt.subplots(figsize=(9, 4.5))
        bottoms = [0.0] * len(present)
        for stage in stage_names:
            values = []
            for name, _ in present:
                stages = at_concurrency(s[name], 1)["stages_mean_ms"]
                value = stages.get(stage, 0.0)
                if stage == "preprocess.handoff":  # its model part is shown as the model's stages
                    value = (handoff_ms(at_concurrency(s[name], 1)) or value) - stages.get("model.tensor_decode", 0.0)
                values.append(max(value, 0.0))
            ax.bar([label for _, label in present], values, bottom=bottoms, label=stage)
            bottoms = [b + v for b, v in zip(bottoms, values)]
        ax.set(title="where the time goes, per hand-off (concurrency 1, mean ms)", ylabel="ms")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out_dir / "stages.png", dpi=110)
        plt.close(fig)
        files.append("stages.png")
    return files


def plot_overload(o: dict[str, dict[str, Any]], out_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, scenario in o.items():
        xs = [r["load_x"] for r in scenario["overload"]]
        axes[0].plot(xs, [r["goodput_x"] for r in scenario["overload"]], marker="o", label=name)
        axes[1].plot(xs, [r["admitted_p99_ms"] for r in scenario["overload"]], marker="o", label=name)
    top = max((r["load_x"] for v in o.values() for r in v["overload"]), default=3)
    axes[0].plot([0, 1, top], [0, 1, 1], color="grey", linestyle=":", label="ideal")
    axes[0].axhline(0.8, color="red", alpha=0.4, linestyle="--", label="target at 2×")
    axes[0].set(title="goodput (200 within 2 s) vs offered load", xlabel="offered load (× capacity)",
                ylabel="goodput (× capacity)",
                ylim=(0, max([1.3] + [r["goodput_x"] * 1.1 for v in o.values() for r in v["overload"]])))
    axes[1].axhline(1000, color="red", alpha=0.4, linestyle="--", label="target at 2×")
    axes[1].set(title="p99 latency of admitted (200) requests", xlabel="offered load (× capacity)", ylabel="ms", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "overload.png", dpi=110)
    plt.close(fig)
    return "overload.png"


def render_overload(o: dict[str, dict[str, Any]], image_dir: str) -> list[str]:
    lines = ["", "## Overload: open loop at multiples of capacity", "",
             "Capacity: the best successful answers per second of closed loops with 8 and 16 clients, measured right "
             "before. Then "
             "requests are sent at a fixed rate whatever the answers (as independent clients do) for each multiple; "
             "goodput counts 200s answered within 2 s. `overload-no-admission` runs the same stack with admission "
             "control effectively off (`MAX_IN_FLIGHT=100000`).", ""]
    for name, scenario in o.items():
        lines += [f"**{name}** (capacity {scenario['meta']['capacity_rps']:.1f} req/s)", "",
                  "| load × capacity | offered req/s | goodput × capacity | admitted p50 ms | admitted p99 ms "
                  "| refused | refused p50 ms | other errors | client CPU ms/req |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in scenario["overload"]:
            st = r["statuses"]
            refused = st.get("503", 0) + st.get("429", 0)
            other = sum(n for k, n in st.items() if k not in ("200", "503", "429"))
            lines.append(f"| {r['load_x']:.1f} | {r['offered_rps']:.1f} | {r['goodput_x']:.2f} | {r['admitted_p50_ms']:.0f} "
                         f"| {r['admitted_p99_ms']:.0f} | {refused} of {r['sent']} | {r['refused_p50_ms']:.1f} | {other} "
                         f"| {r['client_cpu_ms_per_request']:.2f} |")
        lines.append("")
    lines += [f"![overload]({image_dir}/overload.png)", ""]
    return lines


def render(s: dict[str, dict[str, Any]], image_dir: str, notes: str | None, o: dict[str, dict[str, Any]] | None = None) -> str:
    lines = ["# Performance report", ""]
    lines += ["Generated by `bash bench/study.sh` (the whole study) with `ml-pipeline-bench report`.", ""]
    lines += ["## Machine", ""] + [f"- **{k}**: {v}" for k, v in machine().items()] + [""]
    any_meta = next(iter(s.values()))["meta"] if s else {}
    lines += [f"Load: closed loop, the same photo (`{any_meta.get('image', '?')}`) on every request, "
              f"{any_meta.get('time', '')}.", ""]
    lines += ["## Targets", "", "| target | wanted | measured | |", "|---|---|---|---|"]
    for t in targets(s) + (overload_targets(o) if o else []):
        mark = {True: "met", False: "**missed**", None: "—"}[t.met]
        lines.append(f"| {t.name} | {t.wanted} | {t.measured} | {mark} |")
    s, repeats = split(s)
    lines += ["", "## Results", "", "| scenario | c | req/s | mean ms | p50 ms | p95 ms | p99 ms | errors | client CPU ms/req |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, scenario in s.items():
        for r in scenario["runs"]:
            lines.append(f"| {name} | {r['concurrency']} | {r['throughput_rps']:.1f} | {r['mean_ms']:.1f} | {r['p50_ms']:.1f} "
                         f"| {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {r.get('client_cpu_ms_per_request', float('nan')):.2f} |")
    compared = [name for name in s if name + WRK_SUFFIX in s]
    if compared:
        lines += ["", "## Load generator: `ml-pipeline-bench` vs wrk", "",
                  "The same stack, the same encoded upload, right after each other; wrk (C, one thread) runs for a duration.", "",
                  "| scenario | c | req/s bench | req/s wrk | p50 ms bench | p50 ms wrk | client CPU ms/req bench | wrk |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name in compared:
            for r in s[name]["runs"]:
                w = at_concurrency(s[name + WRK_SUFFIX], r["concurrency"])
                if w:
                    lines.append(f"| {name} | {r['concurrency']} | {r['throughput_rps']:.1f} | {w['throughput_rps']:.1f} | {r['p50_ms']:.1f} "
                                 f"| {w['p50_ms']:.1f} | {r.get('client_cpu_ms_per_request', float('nan')):.2f} "
                                 f"| {w.get('client_cpu_ms_per_request', float('nan')):.2f} |")
    if repeats:
        lines += ["", "## Telemetry on vs off, interleaved", "",
                  "Both stacks up at once, runs alternating on, off, on, off, …: drift between stack starts hits both alike.", "",
                  "| repeat | c | req/s on | req/s off | ratio | p50 ms on | p50 ms off |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for c in sorted({r["concurrency"] for v in repeats.values() for r in v["runs"]}):
            for i, on, off in telemetry_pairs(repeats, c):
                lines.append(f"| {i} | {c} | {on['throughput_rps']:.1f} | {off['throughput_rps']:.1f} "
                             f"| {on['throughput_rps'] / off['throughput_rps']:.2f} | {on['p50_ms']:.1f} | {off['p50_ms']:.1f} |")
    lines += ["", "## Plots", ""]
    lines += [f"![latency]({image_dir}/latency.png)", "", f"![throughput]({image_dir}/throughput.png)", ""]
    if any(name in s for name in TRANSPORTS):
        lines += [f"![stages]({image_dir}/stages.png)", ""]
        lines += ["## Stage breakdown per hand-off (concurrency 1, mean ms)", "",
                  "| transport | hand-off ms | " + " | ".join(["decode", "resize", "normalize", "tensor_decode", "inference"]) + " |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, label in TRANSPORTS.items():
            run = at_concurrency(s[name], 1) if name in s else None
            if run:
                st = run["stages_mean_ms"]
                cells = [st.get(k, float("nan")) for k in ("preprocess.decode", "preprocess.resize", "preprocess.normalize", "model.tensor_decode", "model.inference")]
                lines.append(f"| {label} | {handoff_ms(run) or float('nan'):.2f} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
        lines.append("")
    if o:
        lines += render_overload(o, image_dir)
    if notes:
        lines += [notes.strip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="ml-pipeline-bench report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="directory of `ml-pipeline-bench run --out` JSON files")
    parser.add_argument("--out", default="docs/performance.md", help="the Markdown report; plots go to perf/ beside it")
    parser.add_argument("--notes", help="a Markdown file appended as the report's conclusions")
    args = parser.parse_args(argv)
    scenarios = load_runs(Path(args.results))
    overload = load_overload(Path(args.results))
    if not scenarios and not overload:
        print(f"ml-pipeline-bench report: no results in {args.results}")
        return 2
    out = Path(args.out)
    if scenarios:
        plot(scenarios, out.parent / "perf")
    if overload:
        plot_overload(overload, out.parent / "perf")
    notes = Path(args.notes).read_text() if args.notes else None
    out.write_text(render(scenarios, "perf", notes, overload))
    print(f"ml-pipeline-bench report: wrote {out} and {out.parent / 'perf'}/*.png")
    return 0
