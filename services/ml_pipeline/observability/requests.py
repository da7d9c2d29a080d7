"""One served request, HTTP or gRPC: the request metrics (the trace id as exemplar) and its log line."""

from __future__ import annotations

import logging

from ml_pipeline.observability import metrics

log = logging.getLogger("ml_pipeline.request")


def record_request(
    service: str,
    route: str,
    method: str,
    path: str,
    status: int,
    duration_s: float,
    *,
    method_label: str | None = None,
    error: bool | None = None,
) -> None:
    """One served request in the request metrics (the trace id as exemplar) and one log line:
    HTTP requests and gRPC calls alike (their method ``GRPC``, their status the HTTP one).
    ``method_label``: the method as the metrics record it, when not ``method`` itself. ``error``:
    whether the server span is ERROR, when not from status 500 on (HTTP's rule)."""
    labels = (service, route, method_label or method, str(status))
    metrics.REQUESTS.labels(*labels).inc()
    failed = status >= 500 if error is None else error  # an HTTP server span is ERROR from 500 on
    exemplar = metrics.exemplar(error=failed, duration_s=duration_s)
    metrics.REQUEST_DURATION.labels(*labels).observe(duration_s, exemplar=exemplar)
    log.info("%s %s %d", method, path, status, extra={"status": status, "duration_ms": round(duration_s * 1000, 3)})
