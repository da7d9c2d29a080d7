"""``ml-pipeline-bench dashboard``: the Grafana dashboard drawn from the live Prometheus, for the docs
(Grafana itself cannot run everywhere: none of its images is available on the machine the
project's CI runs on). Every timeseries panel of grafana/dashboards/ml-pipeline.json is queried
as Grafana would (``query_range`` over the last minutes, Grafana's ``$__rate_interval`` as 1m) and
drawn with matplotlib at its place in Grafana's 24-column grid, rows as headings; the units are
Grafana's (seconds, requests/s, bytes, percent). It shows the data; it is not Grafana's look."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx

# What Grafana substitutes into queries, with values fitting a 5 s scrape interval (the dashboard
# tests run every panel's query with the same values).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "15m"}
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
UNIT_SCALE = {"s": (1000.0, "ms"), "ms": (1.0, "ms"), "percentunit": (100.0, "%"), "bytes": (2**-20, "MiB")}


def expand(expr: str) -> str:
    """A panel's PromQL with Grafana's variables replaced, as Prometheus is sent it."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's legend format: ``{{service}} {{route}}`` → ``model /predict``."""
    if not template or template == "__auto":
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), template).strip()


def layout(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows and timeseries panels in reading order, each with its grid position."""
    return sorted(
        (p for p in dashboard["panels"] if p["type"] in ("row", "timeseries")),
        key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]),
    )


def query_panel(
    client: httpx.Client, prometheus: str, panel: dict[str, Any], start: float, end: float, step_s: float
) -> list[tuple[str, list[float], list[float]]]:
    """(legend, times, values) for every series of every target of ``panel``."""
    series = []
    for target in panel.get("targets") or ():
        params: dict[str, str | float] = {"query": expand(target["expr"]), "start": start, "end": end, "step": step_s}
        r = client.get(f"{prometheus}/api/v1/query_range", params=params)
        r.raise_for_status()
        for result in r.json()["data"]["result"]:
            points = [(float(t), float(v)) for t, v in result["values"] if v not in ("NaN", "+Inf", "-Inf")]
            name = legend(target.get("legendFormat", ""), result["metric"])
            series.append((name, [t for t, _ in points], [v for _, v in points]))
    return series


def render(dashboard: dict[str, Any], prometheus: str, out: Path, client: httpx.Client, minutes: float = 10) -> int:
    """Draw every panel (its queries over ``client``); returns how many panels had data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = time.time()
    start = end - 60 * minutes
    step_s = max(5.0, 60 * minutes / 240)
    panels = layout(dashboard)
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(20, height * 0.42))
    grid = fig.add_gridspec(height, 24, hspace=0.9, wspace=1.2)
    with_data = 0
    for panel in panels:
        pos = panel["gridPos"]
        if panel["type"] == "row":
            ax = fig.add_subplot(grid[pos["y"] : pos["y"] + 1, :])
            ax.axis("off")
            ax.text(0, 0.2, panel["title"], fontsize=12, fontweight="bold", transform=ax.transAxes)
            continue
        ax = fig.add_subplot(grid[pos["y"] + 1 : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]])
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        scale, shown_unit = UNIT_SCALE.get(unit, (1.0, unit))
        series = query_panel(client, prometheus, panel, start, end, step_s)
        for name, times, values in series:
            ax.plot([(t - end) / 60 for t in times], [v * scale for v in values], label=name, linewidth=1)
        with_data += bool(series)
        ax.set_title(panel["title"], fontsize=9, loc="left")
        ax.set_ylabel(shown_unit, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.text(
        0.01,
        0.003,
        f"{dashboard['title']}: every panel's query against Prometheus over the last {minutes:g} minutes "
        "(x: minutes before the end), drawn by ml-pipeline-bench dashboard, not by Grafana",
        fontsize=8,
        color="grey",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return with_data
