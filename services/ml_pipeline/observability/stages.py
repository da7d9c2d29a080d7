"""Per-request stage timings: ``StageTimer`` wraps each pipeline stage in a span and records its
duration for the ``Server-Timing`` response header, which the services merge hop by hop, and for
the stage histogram in ``ml_pipeline.observability.metrics``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Tracer
from opentelemetry.util.types import AttributeValue

from ml_pipeline.core.errors import PipelineError
from ml_pipeline.observability import metrics


class StageTimer:
    """Times the stages of one request: a span per stage plus ``Server-Timing`` entries.

    Timing names are ``<service>.<stage>`` so the hops' headers merge without collisions.
    ``durations_ns`` keeps this service's own stages by name, in nanoseconds: the same measurement,
    for whatever else reports it (the model's statistics extension).
    """

    def __init__(self, tracer: Tracer, service: str):
        self._tracer = tracer
        self._service = service
        self.timings_ms: dict[str, float] = {}
        self.durations_ns: dict[str, int] = {}

    @contextlib.contextmanager
    def stage(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> Iterator[trace.Span]:
        """A span named ``name`` (keys from ``ml_pipeline.core.wire.Attr``) and its duration recorded."""
        start = time.perf_counter_ns()
        # The span made current by hand: start_as_current_span's generic context managers cost more
        # than the span itself (docs/perf/flame-before-*.txt). The same on an error: recorded, ERROR.
        span = self._tracer.start_span(name, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        failed = False
        try:
            yield span
        except BaseException as exc:
            span.record_exception(exc)
            # A client's bad input (a 4xx) is not our failure: the stage stays UNSET, as the server
            # span does, so junk uploads cannot make the tail sampler keep every trace they start.
            if not (isinstance(exc, PipelineError) and exc.status < 500):
                failed = True
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            ns = time.perf_counter_ns() - start
            self.durations_ns[name] = ns
            self.timings_ms[f"{self._service}.{name}"] = ns / 1e6
            exemplar = metrics.exemplar(error=failed, duration_s=ns / 1e9)
            metrics.STAGE_DURATION.labels(self._service, name).observe(ns / 1e9, exemplar=exemplar)
            span.end()
            otel_context.detach(token)

    def merge_header(self, value: str | None) -> None:
        """Adopt the timings a downstream service reported in its ``Server-Timing`` header."""
        self.timings_ms.update(parse_server_timing(value))

    def header(self) -> str:
        return ", ".join(f"{name};dur={ms:.3f}" for name, ms in self.timings_ms.items())


def parse_server_timing(value: str | None) -> dict[str, float]:
    timings: dict[str, float] = {}
    for entry in (value or "").split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            key, _, raw = param.partition("=")
            if name and key == "dur":
                with contextlib.suppress(ValueError):
                    timings[name] = float(raw)
    return timings
