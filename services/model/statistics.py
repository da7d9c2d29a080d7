"""Triton's statistics extension: per model and version, since the server started, how many requests
succeeded and failed and how long they took in all, split into Triton's stages, in Triton's JSON
format (``GET /v2/models[/{name}[/versions/{version}]]/stats``; gRPC ``ModelStatistics`` reads
the same JSON into its message).

What the stages are here (``model.dataplane`` records them from the request's ``StageTimer``, the
timings its spans and ``Server-Timing`` carry):

* ``queue``: waiting for the request's turn to run: its dynamic batch to start, or a free run slot
  (``MAX_CONCURRENT_INFERENCES``);
* ``compute_input``: the ``tensor_decode`` stage (reading and checking the input tensor);
* ``compute_infer``: the ``inference`` stage less the queue (the batch running in the model);
* ``compute_output``: the ``tensor_encode`` stage (writing the outputs);
* ``success``: the whole request in the model's data plane, from its arrival there to its answer;
  ``fail``: a request for this model that failed (refused input included), until it failed.

``inference_count`` counts the samples of successful requests, ``execution_count`` the model's
runs (one dynamic batch of many requests is one). No response cache: ``cache_hit`` and
``cache_miss`` stay zero; per-batch-size statistics are not kept (``batch_stats`` is empty).

Thread-safe: one lock around every update and every report (executions are counted in worker threads).
Pipeline core: the standard library only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Triton's InferStatistics fields, in its order.
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class RequestTimings:
    """One successful request's nanoseconds."""

    total_ns: int
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int


@dataclass
class _Counts:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    count: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DURATIONS, 0))
    ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DURATIONS, 0))

    def add(self, duration: str, ns: int) -> None:
        self.count[duration] += 1
        self.ns[duration] += max(ns, 0)


class ModelStatistics:
    """The counts of every (model, version); ``clock_ms``: milliseconds since the epoch."""

    def __init__(self, clock_ms: Callable[[], int] = _now_ms):
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], _Counts] = {}

    def add(self, name: str, version: str) -> None:
        """A model version served: reported (with zeros) from now on."""
        with self._lock:
            self._models.setdefault((name, version), _Counts())

    def success(self, name: str, version: str, *, inferences: int, timings: RequestTimings) -> None:
        """A request of ``inferences`` samples answered."""
        now = self._clock_ms()
        with self._lock:
            counts = self._models.setdefault((name, version), _Counts())
            counts.last_inference_ms = now
            counts.inference_count += inferences
            counts.add("success", timings.total_ns)
            counts.add("queue", timings.queue_ns)
            counts.add("compute_input", timings.compute_input_ns)
            counts.add("compute_infer", timings.compute_infer_ns)
            counts.add("compute_output", timings.compute_output_ns)

    def failure(self, name: str, version: str, *, total_ns: int) -> None:
        """A request for this model that failed after ``total_ns``."""
        now = self._clock_ms()
        with self._lock:
            counts = self._models.setdefault((name, version), _Counts())
            counts.last_inference_ms = now
            counts.add("fail", total_ns)

    def executed(self, name: str, version: str) -> None:
        """One run of the model (a batch, of one request or of many)."""
        with self._lock:
            self._models.setdefault((name, version), _Counts()).execution_count += 1

    def report(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's ``$stats_model_response``: every model (version), or those of ``name`` (at ``version``)."""
        with self._lock:
            chosen = [
                (key, counts)
                for key, counts in sorted(self._models.items())
                if (name is None or key[0] == name) and (version is None or key[1] == version)
            ]
            return {"model_stats": [_model_stat(key, counts) for key, counts in chosen]}


def _model_stat(key: tuple[str, str], counts: _Counts) -> dict[str, Any]:
    return {
        "name": key[0],
        "version": key[1],
        "last_inference": counts.last_inference_ms,
        "inference_count": counts.inference_count,
        "execution_count": counts.execution_count,
        "inference_stats": {d: {"count": counts.count[d], "ns": counts.ns[d]} for d in DURATIONS},
        "response_stats": {},
        "batch_stats": [],
        "memory_usage": [],
    }
