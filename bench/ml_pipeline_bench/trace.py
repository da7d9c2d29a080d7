"""``ml-pipeline-bench trace``: one request's trace as Jaeger stores it, drawn as Jaeger's timeline
(a bar per span, children under their parent, one colour per service), for the docs. The data is
Jaeger's own (its query API, ``/api/traces/<id>``); the drawing is matplotlib's, not Jaeger's UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx


def fetch(client: httpx.Client, jaeger: str, trace_id: str) -> dict[str, Any]:
    r = client.get(f"{jaeger}/api/traces/{trace_id}")
    r.raise_for_status()
    (trace,) = r.json()["data"]
    return trace


def timeline(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The spans in Jaeger's order (depth first, siblings by start), each with its service, depth,
    start and duration in ms from the trace's start."""
    spans = {s["spanID"]: s for s in trace["spans"]}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans.values():
        parents = [r["spanID"] for r in span.get("references", ()) if r["refType"] == "CHILD_OF"]
        parent = parents[0] if parents and parents[0] in spans else None
        children.setdefault(parent, []).append(span)
    start = min(s["startTime"] for s in spans.values())
    rows: list[dict[str, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["startTime"]):
            rows.append(
                {
                    "service": trace["processes"][span["processID"]]["serviceName"],
                    "name": span["operationName"],
                    "depth": depth,
                    "start_ms": (span["startTime"] - start) / 1000,
                    "duration_ms": span["duration"] / 1000,
                }
            )
            walk(span["spanID"], depth + 1)

    walk(None, 0)
    return rows


def render(trace: dict[str, Any], out: Path) -> int:
    """Draw the trace; returns the number of spans drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = timeline(trace)
    services = sorted({r["service"] for r in rows})
    palette = plt.get_cmap("tab10")
    colours = {service: palette(i % 10) for i, service in enumerate(services)}
    total_ms = max(r["start_ms"] + r["duration_ms"] for r in rows)
    fig, ax = plt.subplots(figsize=(14, 0.32 * len(rows) + 1.2))
    for i, r in enumerate(rows):
        ax.barh(i, r["duration_ms"], left=r["start_ms"], color=colours[r["service"]], height=0.7)
        label = f"{'  ' * r['depth']}{r['service']}: {r['name']}"
        ax.text(-total_ms * 0.01, i, label, ha="right", va="center", fontsize=8)
        ax.text(
            r["start_ms"] + r["duration_ms"] + total_ms * 0.005,
            i,
            f"{r['duration_ms']:.2f} ms",
            va="center",
            fontsize=7,
        )
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlim(0, total_ms * 1.12)
    ax.set_xlabel("ms from the start of the request")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(
        f"trace {trace['traceID']}: {len(rows)} spans, {len(services)} services, {total_ms:.1f} ms "
        "(Jaeger's data, drawn by ml-pipeline-bench trace)",
        fontsize=10,
        loc="left",
    )
    fig.savefig(out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return len(rows)
