"""Structured logs: every log line is one JSON object with the trace id, span id, service and
instance of the span that was current when it was logged, so ``grep <trace_id>`` follows a request
through all logs.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

if TYPE_CHECKING:
    from ml_pipeline.settings import ServiceSettings


_STANDARD_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured duplicate of the message
    "otel_span",
}


def _record_with_span(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """A log record factory that remembers the span current where the line was logged, so a
    handler formatting it later or on another thread (a QueueHandler's listener) still finds it."""

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.otel_span = trace.get_current_span()
        return record

    make.with_span = True  # type: ignore[attr-defined]  # installed once, however often logging is set up
    return make


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the current span's trace id, span id, service and instance."""

    def __init__(self, service: str, instance: str):
        super().__init__()
        self._service = service
        self._instance = instance

    def format(self, record: logging.LogRecord) -> str:
        span = getattr(record, "otel_span", None) or trace.get_current_span()
        ctx = span.get_span_context()
        resource = getattr(span, "resource", None)  # SDK spans know which service made them
        attrs = resource.attributes if resource is not None else {}
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": attrs.get("service.name", self._service),
            "instance": attrs.get("service.instance.id", self._instance),
            "trace_id": format(ctx.trace_id, "032x") if ctx.is_valid else None,
            "span_id": format(ctx.span_id, "016x") if ctx.is_valid else None,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # A call's `extra` fields join the line but never replace the ones above.
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_FIELDS and k not in line})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(service: str, settings: ServiceSettings) -> None:
    """Send every logger (uvicorn's included) through one JSON handler on stdout."""
    # A line never shows where the call was made, nor its thread's or process's name: logging
    # need not look them up for every record (~8 of a line's ~40 µs, microbenchmark; the
    # logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    if not getattr(logging.getLogRecordFactory(), "with_span", False):
        logging.setLogRecordFactory(_record_with_span(logging.getLogRecordFactory()))
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service, settings.service_instance_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # httpx logs every request at INFO; our request lines already cover each hop.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
