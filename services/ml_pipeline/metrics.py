"""Prometheus metrics of every service, served on ``/metrics`` (prometheus-client).

Module-level, so creating an app (tests create many) never registers anything twice; the
``service`` label tells the three services apart when they share one process. Prometheus scrapes
each replica on its own (``dns_sd_configs``), so its ``instance`` label is the replica.

Duration histograms carry the current ``trace_id`` as an exemplar: in the OpenMetrics exposition
(which Prometheus asks for when exemplar storage is on) a slow bucket links to a trace in Jaeger.
The default registry also holds prometheus-client's process collector
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``, …).
"""

from __future__ import annotations

import platform

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder

from ml_pipeline import __version__

# Seconds, for a pipeline whose hops take 1 ms (postprocess) to ~1 s (a cold or overloaded chain).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
# A [1,3,224,224] float32 tensor is 602,112 bytes + header; JSON floats are ~3× that.
BYTES_BUCKETS = (1e3, 1e4, 1e5, 6.1e5, 1e6, 2.5e6, 5e6, 1e7, 2.5e7)

REQUESTS = Counter(
    "ml_pipeline_requests",
    "Requests served, by service, route template, method and HTTP status (probes and scrapes excluded).",
    ["service", "route", "method", "status"],
)
REQUEST_DURATION = Histogram(
    "ml_pipeline_request_duration_seconds",
    "Time from request received to response sent, by service, route, method and status; exemplars carry trace_id.",
    ["service", "route", "method", "status"],
    buckets=LATENCY_BUCKETS_S,
)
IN_FLIGHT = Gauge(
    "ml_pipeline_requests_in_flight",
    "Requests being served right now (probes and scrapes excluded).",
    ["service"],
)
QUEUED = Gauge(
    "ml_pipeline_requests_queued",
    "Requests waiting for a free slot in front of the service (admission control).",
    ["service"],
)
REFUSED = Counter(
    "ml_pipeline_requests_refused",
    "Requests refused or dropped by admission control, by reason: queue_full, queue_timeout (503), "
    "deadline (504: it passed while queued), client_gone (the client hung up while queued).",
    ["service", "reason"],
)
DOWNSTREAM_RETRIES = Counter(
    "ml_pipeline_downstream_retries",
    "Retries of a call to the next service on another replica, by downstream and the failure that "
    "caused it (connect_error, transport_error, timeout, status_5xx); budget_exhausted: a retry the "
    "retry budget refused.",
    ["downstream", "reason"],
)
STAGE_DURATION = Histogram(
    "ml_pipeline_stage_duration_seconds",
    "Time spent in one pipeline stage (decode, resize, normalize, handoff, inference, …); exemplars carry trace_id.",
    ["service", "stage"],
    buckets=LATENCY_BUCKETS_S,
)
HANDOFF_BYTES = Histogram(
    "ml_pipeline_handoff_tensor_bytes",
    "Bytes of the tensor preprocess hands to the model per request, by transport.",
    ["transport"],
    buckets=BYTES_BUCKETS,
)
BATCH_SIZE = Histogram(
    "ml_pipeline_batch_size",
    "Samples per batch the model's dynamic batcher ran.",
    ["service"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
)
BATCH_QUEUE_DURATION = Histogram(
    "ml_pipeline_batch_queue_duration_seconds",
    "Time a request waited in the dynamic batcher's queue before its batch started.",
    ["service"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)
CACHE_LOOKUPS = Counter(
    "ml_pipeline_cache_lookups",
    "Result cache lookups by outcome (hit or miss); only counted when the cache is on.",
    ["service", "result"],
)
CACHE_ENTRIES = Gauge("ml_pipeline_cache_entries", "Entries in the result cache.", ["service"])
BUILD_INFO = Info(
    "ml_pipeline_build",
    "Version and replica of the running service (join on instance for replica names).",
    ["service"],
)
MODEL_INFO = Info("ml_pipeline_model", "The model this replica serves: name and backend (onnx or random).")


# What ``exposition`` answers with (prometheus-client's two formats).
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def exemplar(trace_id: str | None) -> dict[str, str] | None:
    return {"trace_id": trace_id} if trace_id else None


def register_service(service: str, instance_id: str) -> None:
    """Publish the build info and zero the in-flight gauge so every series exists from the start."""
    BUILD_INFO.labels(service).info(
        {"version": __version__, "python": platform.python_version(), "replica": instance_id}
    )
    IN_FLIGHT.labels(service)


def exposition(accept_header: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper asked for (OpenMetrics carries the exemplars)."""
    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(REGISTRY), content_type
