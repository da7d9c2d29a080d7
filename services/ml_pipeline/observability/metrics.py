"""Prometheus metrics of every service (prometheus-client), served by ``serve_metrics`` on an
internal port of their own (``METRICS_PORT``), never on the port the service answers requests on.

Module-level, so creating an app (tests create many) never registers anything twice; the
``service`` label tells the three services apart when they share one process. Prometheus scrapes
each replica on its own (``dns_sd_configs``), so its ``instance`` label is the replica.

Duration histograms carry the current ``trace_id`` as an exemplar: in the OpenMetrics exposition
(which Prometheus asks for when exemplar storage is on) a slow bucket links to a trace in Jaeger —
only a trace the collector keeps (``observability.sampling``: with tail sampling, not every one).
Exemplars carry other clients' trace ids, one more reason the exposition is off the public port.
The default registry also holds prometheus-client's process collector
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``, …).
"""

from __future__ import annotations

import logging
import platform
import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry import trace
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder, make_wsgi_app

from ml_pipeline import __version__
from ml_pipeline.observability.sampling import TailSampling

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
    "deadline (504: it passed while queued), client_gone (the client hung up while queued), body_budget (503: "
    "too many request bodies being received at once).",
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


_sampling = TailSampling()  # every trace stored, until a service's settings say otherwise


def use_sampling(sampling: TailSampling) -> None:
    """The collector's sampling rules, which decide the traces exemplars may name (TRACE_SAMPLING…)."""
    global _sampling
    _sampling = sampling


def exemplar(*, error: bool, duration_s: float) -> dict[str, str] | None:
    """The current span's trace id as an exemplar of an observation of ``duration_s`` (of a span that
    failed, or not), when the collector is sure to keep that trace; None otherwise (the bucket keeps
    its last one), and for a span not recorded (an unsampled parent): nothing is exported to name."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    trace_id = format(context.trace_id, "032x")
    if _sampling.keeps(trace_id, error=error, duration_s=duration_s):
        return {"trace_id": trace_id}
    return None


def register_service(service: str, instance_id: str) -> None:
    """Publish the build info and zero the in-flight gauge so every series exists from the start."""
    BUILD_INFO.labels(service).info(
        {"version": __version__, "python": platform.python_version(), "replica": instance_id}
    )
    IN_FLIGHT.labels(service)


def exposition(accept_header: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper asked for (OpenMetrics carries the exemplars); what
    the metrics server answers, for in-process readers (tests)."""
    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(REGISTRY), content_type


# --------------------------------------------------------------------------- the metrics server

# A scrape connection that sends nothing for this long is closed: an idle or trickling client
# never holds a server thread for ever.
SCRAPE_READ_TIMEOUT_S = 5.0
# Scrapes served at once (a thread each); more are closed at once, not queued. Prometheus takes
# one per interval; every scrape encodes the whole registry holding the GIL, so a crowd of them
# would slow the service's own requests.
MAX_SCRAPES = 4

_log = logging.getLogger("ml_pipeline.metrics")


class _ScrapeHandler(WSGIRequestHandler):
    timeout = SCRAPE_READ_TIMEOUT_S

    def log_message(self, format: str, *args: object) -> None:
        """No line per scrape (the request log is for requests)."""


class _MetricsServer(ThreadingWSGIServer):
    """prometheus-client's thread-per-scrape server with its scrapes bounded (``max_scrapes``)
    and a failed one (timed out, reset) logged at DEBUG instead of a traceback on stderr."""

    max_scrapes = MAX_SCRAPES

    def __init__(self, *args, **kwargs) -> None:
        self._slots = threading.BoundedSemaphore(self.max_scrapes)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # closed, not queued: the next interval's scrape gets in
            return
        try:
            super().process_request(request, client_address)  # a thread, which releases the slot
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        _log.debug("metrics scrape from %s failed", client_address, exc_info=True)


def serve_metrics(
    host: str,
    port: int,
    *,
    read_timeout_s: float = SCRAPE_READ_TIMEOUT_S,
    max_scrapes: int = MAX_SCRAPES,
) -> WSGIServer:
    """Serve the registry on ``host``:``port`` (0: any free port) from a daemon thread, as
    prometheus-client's ``start_http_server`` does, with its WSGI app: every path answers with the
    metrics, in OpenMetrics (exemplars included) when the scraper's ``Accept`` asks for it, else in
    the Prometheus text format; gzip when accepted. Unlike ``start_http_server``, an idle connection
    is closed after ``read_timeout_s`` and at most ``max_scrapes`` are served at once.

    The caller owns the returned server: ``server.server_address`` is where it listens,
    ``server.shutdown()`` stops it (a process that exits just leaves it: the thread is a daemon)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    handler = type("ScrapeHandler", (_ScrapeHandler,), {"timeout": read_timeout_s})
    server_class = type("MetricsServer", (_MetricsServer,), {"address_family": family, "max_scrapes": max_scrapes})
    server: WSGIServer = make_server(host, port, make_wsgi_app(REGISTRY), server_class, handler_class=handler)
    threading.Thread(target=server.serve_forever, name=f"metrics:{server.server_port}", daemon=True).start()
    return server
