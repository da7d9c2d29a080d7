"""The one-command smoke run: the compose `smoke` service (profile `smoke`) runs this once the
entry is healthy, then exits 0, or 1 with a one-line reason.

    docker compose --profile smoke up --build --abort-on-container-exit --exit-code-from smoke
    docker compose down -v

What it checks: `POST /finalize` with test.jpg answers 200 and `espresso`; the answer's trace id
is in Jaeger with spans from all three services; Prometheus has counted the request in
postprocess's latency histogram. The Python standard library only: it runs on the stack's Python
base image as it is, with nothing installed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

SERVICES = ("postprocess", "preprocess", "model")
HISTOGRAM = 'ml_pipeline_request_duration_seconds_count{service="postprocess",route="/finalize",status="200"}'


class SmokeFailure(Exception):
    """What went wrong, in one line."""


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30) -> Any:
    """The JSON answer of a GET (or a POST with ``data``); HTTP errors raise with their body."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise SmokeFailure(f"{url} answered {exc.code}: {exc.read()[:300].decode('utf-8', 'replace')}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SmokeFailure(f"{url} could not be reached: {exc}") from None


def classify(entry: str, photo: bytes) -> dict[str, Any]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="test.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    answer = http(f"{entry}/finalize", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    if answer.get("label") != "espresso":
        raise SmokeFailure(f"test.jpg was classified as {answer.get('label')!r}, not 'espresso'")
    return answer


def wait_for(check: Callable[[], str | None], timeout_s: float, interval_s: float = 1.0) -> None:
    """Poll ``check`` (None: done; else why not yet) until it passes or ``timeout_s`` is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            why = check()
        except SmokeFailure as exc:
            why = str(exc)
        if why is None:
            return
        if time.monotonic() >= deadline:
            raise SmokeFailure(f"{why} (after {timeout_s:.0f} s)")
        time.sleep(interval_s)


def trace_services(jaeger: str, trace_id: str) -> str | None:
    try:
        trace = http(f"{jaeger}/api/traces/{trace_id}", timeout=10)
    except SmokeFailure:
        return f"trace {trace_id} is not in Jaeger"
    found = {p["serviceName"] for t in trace.get("data", []) for p in t.get("processes", {}).values()}
    missing = [s for s in SERVICES if s not in found]
    return f"trace {trace_id} in Jaeger has no spans from {', '.join(missing)}" if missing else None


def counted(prometheus: str) -> str | None:
    query = urllib.parse.urlencode({"query": f"sum({HISTOGRAM})"})
    result = http(f"{prometheus}/api/v1/query?{query}", timeout=10)["data"]["result"]
    if not result or float(result[0]["value"][1]) < 1:
        return "Prometheus has not counted the request in postprocess's latency histogram"
    return None


def smoke(entry: str, jaeger: str, prometheus: str, photo: bytes, wait_s: float = 90) -> str:
    answer = classify(entry, photo)
    trace_id = answer["trace_id"]
    wait_for(lambda: trace_services(jaeger, trace_id), wait_s)
    wait_for(lambda: counted(prometheus), wait_s)
    return f"smoke: ok: test.jpg is {answer['label']} ({answer['score']:.2f}), trace {trace_id} spans all three services in Jaeger, Prometheus counted it"


def main() -> int:
    entry = os.environ.get("SMOKE_ENTRY_URL", "http://edge:8080")
    jaeger = os.environ.get("SMOKE_JAEGER_URL", "http://jaeger:16686")
    prometheus = os.environ.get("SMOKE_PROMETHEUS_URL", "http://prometheus:9090")
    photo_path = os.environ.get("SMOKE_PHOTO", "/smoke/test.jpg")
    try:
        with open(photo_path, "rb") as f:
            photo = f.read()
        print(smoke(entry, jaeger, prometheus, photo, float(os.environ.get("SMOKE_WAIT_S", "90"))), flush=True)
    except (SmokeFailure, OSError) as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
