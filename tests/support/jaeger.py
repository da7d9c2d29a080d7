"""Reading traces back from a deployed Jaeger's HTTP API (the compose stack, the Swarm stack)."""

from __future__ import annotations

import time

import httpx

PIPELINE = {"postprocess", "preprocess", "model"}


def fetch_trace(jaeger: str, trace_id: str, timeout_s: float = 45) -> dict:
    """Poll Jaeger until the trace holds the spans of all three services (export is batched)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        r = httpx.get(f"{jaeger}/api/traces/{trace_id}", timeout=5)
        if r.status_code == 200 and r.json().get("data"):
            last = r.json()["data"][0]
            services = {last["processes"][s["processID"]]["serviceName"] for s in last["spans"]}
            if services >= PIPELINE and len(last["spans"]) >= 13:
                return last
        time.sleep(1)
    raise AssertionError(f"trace {trace_id} incomplete in Jaeger after {timeout_s}s: {last}")


def tags(obj) -> dict:
    return {t["key"]: t["value"] for t in obj.get("tags", [])}
